"""The weights a round hands to the engine (rounds/handoff.py): the kept share by hand, stochastic rounding's
unbiasedness, and a round whose update is below one bf16 step served so the engine computes the trained model."""

import warnings

import pytest
import torch
from helpers import make_model, make_tokenizer
from safetensors.torch import load_file

from dynsdpb_selfplay.rounds.handoff import UpdateLostWarning, hand_off, stochastic_round, update_share


def test_update_share_is_the_projection_on_the_true_update():
    start = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([1.0]), "n": torch.tensor([3])}
    trained = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([1.0]), "n": torch.tensor([3])}
    served = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([5.0]), "n": torch.tensor([3])}
    # <(1, 0), (1, 2)> / |(1, 2)|^2 = 1 / 5; "b" did not move and "n" is not floating point: neither counts.
    got = update_share(start, trained, served)
    assert got["update_share"] == pytest.approx(0.2)
    assert got["min_tensor"] == "a" and got["min_tensor_share"] == pytest.approx(0.2)
    assert update_share(start, trained, trained)["update_share"] == pytest.approx(1.0)
    assert update_share(start, trained, start)["update_share"] == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_is_unbiased_and_stays_between_the_neighbours(dtype):
    grid = torch.tensor([0.02, -0.02, 1.0, 0.5, -3.0, 7e-4, 0.0]).to(dtype)
    up = torch.nextafter(grid, torch.tensor(float("inf"), dtype=dtype)).float()
    frac = torch.tensor([0.3, 0.3, 0.1, 0.0, 0.0, 0.7, 0.0])  # where between two neighbours each x lies
    x = grid.float() + frac * (up - grid.float())
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([stochastic_round(x, dtype, g).float() for _ in range(4000)])
    assert stochastic_round(x, dtype, g).dtype == dtype
    step = up - grid.float()
    assert torch.all((draws == grid.float()) | (draws == up))  # always one of the two neighbours
    # Unbiased: the mean lands within 4 standard errors of x (each draw is lo or hi: sd <= step / 2) ...
    assert torch.all((draws.mean(0) - x).abs() <= 4 * step / 2 / 4000**0.5)
    # ... where rounding to nearest is off by 0.1-0.3 of a step.
    assert torch.all((x.to(dtype).float() - x).abs()[[0, 1, 2, 5]] >= 0.09 * step[[0, 1, 2, 5]])
    for i in (3, 4, 6):  # representable values never move
        assert torch.all(draws[:, i] == x[i])


def _save(model, tokenizer, path, dtype):
    model.to(dtype).save_pretrained(path)
    tokenizer.save_pretrained(path)
    model.float()
    return path


def _logits(path, ids):
    """The model in ``path`` run in fp32, so only the weights' values differ between copies."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_an_update_below_one_bf16_step_reaches_the_engine(tmp_path):
    """The start model holds bf16 values (as the prepared SmolLM2 does); the round moves every weight 0.4 of a bf16
    step in the direction that raises one token's logit (a sign step, like Adam's first). Rounded to nearest, the
    served model is the start model again; the stochastic copy's logits are the trained model's up to noise."""
    tok = make_tokenizer()
    model = make_model(len(tok), seed=0, hidden=64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    start = _save(model, tok, tmp_path / "start", torch.bfloat16)
    ids = torch.randint(0, len(tok), (4, 24), generator=torch.Generator().manual_seed(1))
    target = 7
    model(input_ids=ids).logits[..., target].mean().backward()
    with torch.no_grad():
        for p in model.parameters():  # to the neighbour it moves towards (below a power of two the step halves)
            towards = torch.where(p.grad > 0, float("inf"), float("-inf")).to(torch.bfloat16)
            p.add_(0.4 * (torch.nextafter(p.to(torch.bfloat16), towards).float() - p))
    trained = _save(model, tok, tmp_path / "trained", torch.float32)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto keeps the update: no warning
        info = hand_off(start, trained, tmp_path / "served", "bfloat16", seed=3, round_index=1)
    assert info["handoff"] == "stochastic" and info["served"] == str(tmp_path / "served")
    assert info["nearest_share"] < 0.01  # rounded to nearest, every weight falls back to its start value
    assert info["served_share"] == pytest.approx(1.0, abs=0.05)
    served = load_file(str(tmp_path / "served" / "model.safetensors"))
    assert {t.dtype for t in served.values()} == {torch.bfloat16}
    assert set(served) == set(load_file(str(trained / "model.safetensors")))
    again = hand_off(start, trained, tmp_path / "again", "bfloat16", seed=3, round_index=1)  # a resumed run
    assert again["served_share"] == info["served_share"]

    want, base = _logits(trained, ids)[..., target], _logits(start, ids)[..., target]
    err_nearest = (base - want).abs().mean()  # what the engine served before: the start model
    err_stochastic = (_logits(tmp_path / "served", ids)[..., target] - want).abs().mean()
    assert err_stochastic < 0.25 * err_nearest

    with pytest.warns(UpdateLostWarning, match=r"keep \d+\.\d% of the round's update"):
        nearest = hand_off(start, trained, tmp_path / "n", "bfloat16", handoff="nearest", round_index=1)
    assert nearest["handoff"] == "nearest" and nearest["served"] == str(trained)
    assert not (tmp_path / "n").exists()


def test_an_fp32_engine_serves_the_trained_weights_and_big_updates_round_to_nearest(tmp_path):
    tok = make_tokenizer()
    model = make_model(len(tok), seed=0, hidden=64)
    start = _save(model, tok, tmp_path / "start", torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.2)  # tens of bf16 steps: rounding to nearest keeps nearly all of it
    trained = _save(model, tok, tmp_path / "trained", torch.float32)
    exact = hand_off(start, trained, tmp_path / "served", "float32")
    assert exact == {
        "served": str(trained),
        "dtype": "float32",
        "handoff": "exact",
        "served_share": 1.0,
        "nearest_share": 1.0,
    }
    big = hand_off(start, trained, tmp_path / "served", "bfloat16")
    assert big["handoff"] == "nearest" and big["nearest_share"] > 0.95 and big["served"] == str(trained)
    assert not (tmp_path / "served").exists()
