"""Shared by the planner's test files (test_plan_*.py): the 8-layer tiny LLaMA shape, and tiny model folders of
each family written with save_pretrained."""


LAYERS = 8
SHAPE = ["model=tiny-llama", f"model.shape.num_hidden_layers={LAYERS}", "hardware.gradient_checkpointing=true",
         "profile.batch_size=4", "profile.seq_len=32", "hardware.max_micro_batch_size=null"]


def llama_folder(path):  # another shape than tiny-llama's (hidden 96, 3 layers)
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=512)).save_pretrained(path)


def gpt2_folder(path):  # 32 positions
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=512, n_positions=32, bos_token_id=1,
                               eos_token_id=2)).save_pretrained(path)


def bert_folder(path, layers=2):  # 32 positions, another width than MiniLM's
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                         vocab_size=512, max_position_embeddings=32)).save_pretrained(path)


def qwen2_folder(path):  # 2 layers, and a layer_types list of 2 in its config.json (the probes build 2 and 3)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=128,
                                 tie_word_embeddings=True)).save_pretrained(path)


def t5_folder(path, layers=2):  # its config.json sets decoder_start_token_id, as every T5 checkpoint's does
    from transformers import T5Config, T5Model

    T5Model(T5Config(d_model=32, d_ff=64, d_kv=8, num_layers=layers, num_heads=4, vocab_size=512, pad_token_id=0,
                     eos_token_id=1, decoder_start_token_id=0)).save_pretrained(path)


def bart_folder(path):
    from transformers import BartConfig, BartModel

    BartModel(BartConfig(d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=4, decoder_attention_heads=4, vocab_size=512,
                         max_position_embeddings=64)).save_pretrained(path)


FOLDERS = {"llama": llama_folder, "gpt2": gpt2_folder, "bert": bert_folder, "qwen2": qwen2_folder, "t5": t5_folder,
           "bart": bart_folder}
