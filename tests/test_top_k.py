"""methods/top_k.py: the sampled-threshold top-k returns torch.topk's selection, on random and adversarial scores."""

import pytest
import torch

from ftbench.methods import top_k as top_k_module
from ftbench.methods.top_k import MIN_RATIO, SAMPLE, at_or_above, sampled_rank, top_k

N = MIN_RATIO * SAMPLE + 12345  # just long enough for the sampled path


def assert_same_selection(scores: torch.Tensor, k: int) -> None:
    """The same values as torch.topk; the same indices wherever the k-th value is untied."""
    got = top_k(scores, k)
    want = scores.topk(k)
    assert got.numel() == k and bool((got[1:] > got[:-1]).all())  # each once, ascending
    torch.testing.assert_close(scores[got].sort(descending=True).values, want.values, rtol=0, atol=0,
                               equal_nan=True)
    kth = want.values[-1]
    if torch.isnan(kth) or int((scores == kth).sum()) == 1:
        assert set(got.tolist()) == set(want.indices.tolist())
    else:  # tied at the boundary: every entry above the k-th value is kept, the rest are ties of it
        above = (scores > kth) | torch.isnan(scores)
        assert set(above.nonzero().squeeze(1).tolist()) <= set(got.tolist())
        assert bool((scores[got][~above[got]] == kth).all())


def gaussian(seed: int) -> torch.Tensor:
    return torch.randn(N, generator=torch.Generator().manual_seed(seed)).abs()


def with_ties() -> torch.Tensor:
    return (gaussian(1) * 4).round()  # a few dozen distinct values, thousands of copies each


def few_nonzeros() -> torch.Tensor:
    scores = torch.zeros(N)
    scores[torch.randperm(N, generator=torch.Generator().manual_seed(2))[:50]] = torch.rand(50) + 0.5
    return scores


def one_outlier_block() -> torch.Tensor:  # the largest entries packed together, where a sample rarely lands
    scores = gaussian(3)
    scores[1000:1100] = 100.0 + torch.arange(100.0)
    return scores


def with_nan() -> torch.Tensor:
    scores = gaussian(4)
    scores[[7, 70_000, N - 1]] = float("nan")  # N - 1: past the last whole block of at_or_above
    return scores


CASES = {"gaussian": lambda: gaussian(0), "ties": with_ties, "all equal": lambda: torch.full((N,), 0.25),
         "few nonzeros": few_nonzeros, "outlier block": one_outlier_block, "nan": with_nan,
         "short (plain topk)": lambda: gaussian(5)[:1000]}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("rate", [1e-4, 0.0119, 0.05])
def test_the_selection_is_torch_topks(case, rate):
    scores = CASES[case]()
    assert_same_selection(scores, max(1, round(rate * scores.numel())))


def test_an_unlucky_sample_falls_back_to_the_full_top_k(monkeypatch):
    calls = []
    monkeypatch.setattr(top_k_module, "sampled_rank", lambda n, k: calls.append(k) or 1)  # threshold = sample max
    assert_same_selection(gaussian(6), 500)
    assert calls == [500]


@pytest.mark.parametrize("n,k", [(N, 1), (N, 3000), (10**8, 10**6), (N, N // MIN_RATIO)])
def test_the_sampled_rank_leaves_a_margin_above_the_expected_count(n, k):
    expected = SAMPLE * k / n
    assert expected < sampled_rank(n, k) <= SAMPLE


def test_the_training_random_stream_is_untouched():
    torch.manual_seed(11)
    before = torch.rand(3)
    torch.manual_seed(11)
    top_k(gaussian(7), 100)
    assert torch.equal(torch.rand(3), before)


class TopkSizes(torch.overrides.TorchFunctionMode):
    """Records the length of every vector torch.topk runs over."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.topk, torch.Tensor.topk):
            self.sizes.append(args[0].numel())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case,full", [("gaussian", False), ("ties", False), ("all equal", True)])
def test_a_full_top_k_runs_only_when_the_candidates_are_everything(case, full):
    scores, k = CASES[case](), round(0.0119 * N)
    with TopkSizes() as mode:
        top_k(scores, k)
    assert mode.sizes[0] == SAMPLE and (max(mode.sizes[1:]) == N) == full


@pytest.mark.parametrize("n", [8 * 1000, 8 * 1000 + 5])
def test_the_blocked_candidate_pass_keeps_what_a_plain_comparison_keeps(n):
    scores = torch.rand(n, generator=torch.Generator().manual_seed(n))
    scores[[3, n - 1]] = float("nan")  # in a block, and (n = 8005) in the tail after the last block
    threshold = torch.tensor(0.99)
    assert torch.equal(at_or_above(scores, threshold), (~(scores < threshold)).nonzero().squeeze(1))
