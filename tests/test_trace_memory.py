"""The CPU's traced peak counts what a CUDA allocator would: every storage an
operator creates, until it is freed, and never a view or an in-place result."""

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ftbench.measure.trace import LiveTensorPeak
from helpers import run, tiny_model

MiB = 2**20


def test_allocations_views_in_place_and_frees():
    with LiveTensorPeak(held_bytes=5 * MiB) as trace:
        a = torch.zeros(MiB // 4)  # 1 MiB
        b = a * 2  # 1 MiB
        view = a[:10]
        a.add_(1)
        b.mul_(3)
        assert trace.live_bytes == 2 * MiB  # views and in-place results allocate nothing
        del a
        del b  # freed: its MiB is no longer live
        c = torch.ones(MiB // 2)  # 2 MiB; `a` lives on through its view
        assert trace.live_bytes == 3 * MiB
        del view, c
        d = torch.empty(MiB // 8)
        assert trace.live_bytes == MiB // 2
        assert trace.peak_new_bytes == 3 * MiB and trace.peak_bytes == 8 * MiB
        assert trace.peak_op == "aten::ones"
        assert trace.peak_by_op == {"aten::zeros": MiB, "aten::ones": 2 * MiB}  # what was live then
        trace.reset_peak()
        assert trace.peak_new_bytes == MiB // 2
        assert trace.peak_by_op == {"aten::empty.memory_format": MiB // 2}
        del d


def test_held_storages_count_until_they_are_freed():
    """What `hold` registers (optimizer state, masters) is held until freed, as a dropped block's state is
    mid-trace (BAdam's drop): counted once at the start, it stayed in the peak after it was gone."""
    state = torch.zeros(MiB // 4)  # 1 MiB
    with LiveTensorPeak(held_bytes=5 * MiB) as trace:
        trace.hold([state, state[:10]])  # a view: its storage once
        assert trace.now_bytes == 6 * MiB
        del state  # dropped
        fresh = torch.ones(MiB // 2)  # 2 MiB
        assert trace.now_bytes == 7 * MiB and trace.peak_bytes == 7 * MiB
        del fresh
    assert trace.peak_by_op == {"aten::ones": 2 * MiB}  # created while tracing: what held storages are not


def test_sparse_results_count_their_indices_and_values():
    dense = torch.zeros(1000, 1000)
    dense[0, :5] = 1.0
    with LiveTensorPeak() as trace:
        sparse = dense.to_sparse()
        assert trace.live_bytes == 5 * 2 * 8 + 5 * 4  # int64 indices (2 x 5) and float values
    del sparse


def test_csr_results_count_their_row_pointers_columns_and_values():
    dense = torch.zeros(10, 1000)
    dense[0, :5] = 1.0
    with LiveTensorPeak() as trace:
        csr = dense.to_sparse_csr()
        # int64 row pointers, float values, and the columns: a view of the conversion's 2 x 5 int64 indices
        storages = [t.untyped_storage().nbytes() for t in (csr.crow_indices(), csr.col_indices(), csr.values())]
        assert storages == [11 * 8, 2 * 5 * 8, 5 * 4] and trace.live_bytes == sum(storages)
    del csr


def test_backward_and_checkpoint_recompute_are_traced():
    """Saved activations, recomputed ones and gradients are operator outputs too:
    checkpointing must show a lower traced peak, and the peak must hold the gradients."""

    def peak(checkpointing: bool) -> int:
        torch.manual_seed(0)
        model = tiny_model("tiny-llama", head="causal_lm")
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ids = torch.randint(0, model.config.vocab_size, (4, 64))
        with LiveTensorPeak() as trace:
            model(input_ids=ids, labels=ids).loss.backward()
        grads = sum(p.grad.nbytes for p in model.parameters())
        assert trace.live_bytes >= grads  # the gradients outlive the step
        return trace.peak_new_bytes

    plain, recomputed = peak(False), peak(True)
    assert recomputed < 0.8 * plain


def test_profile_on_the_cpu_reports_the_traced_peak(tmp_path):
    result = run(tmp_path / "profile", "mode=profile", "method=sift", "profile.steps=2", "profile.warmup_steps=1",
                 "profile.batch_size=2", "profile.seq_len=16")
    memory = result["memory"]
    breakdown = memory["breakdown"]
    held = sum(breakdown[k] for k in ("weights_bytes", "master_bytes", "grad_bytes", "optimizer_state_bytes"))
    assert memory["train_peak_allocated_bytes"] is None  # no allocator counter on the CPU
    assert memory["train_peak_traced_bytes"] > held
    assert breakdown["activations_bytes"] == memory["train_peak_traced_bytes"] - held
    assert memory["train_peak_traced_op"].startswith("aten::")  # where the peak was reached
    by_op = memory["train_peak_traced_by_op"]  # what the step had created and still held then, largest first
    assert 0 < len(by_op) <= 8 and all(op.startswith("aten::") for op in by_op)
    assert list(by_op.values()) == sorted(by_op.values(), reverse=True)
    assert sum(by_op.values()) <= breakdown["activations_bytes"] + breakdown["grad_bytes"]  # the step makes both
    assert _get_current_dispatch_mode() is None  # the trace ends with the run


def test_a_failed_run_leaves_no_trace_running(tmp_path):
    result = run(tmp_path / "nan", "mode=profile", "profile.steps=2", "profile.warmup_steps=0", "optim.lr=1e30",
                 "profile.batch_size=2", "profile.seq_len=16")
    assert result["status"] == "nan"
    assert _get_current_dispatch_mode() is None


def test_untraced_profile_reports_no_peak(tmp_path):
    result = run(tmp_path / "off", "mode=profile", "profile.trace_memory=false", "profile.steps=1",
                 "profile.warmup_steps=0", "profile.batch_size=2", "profile.seq_len=16")
    assert result["memory"]["train_peak_traced_bytes"] is None
    assert result["memory"]["train_peak_traced_by_op"] is None
    assert result["memory"]["breakdown"]["activations_bytes"] is None
