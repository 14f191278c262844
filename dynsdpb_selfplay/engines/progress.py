"""What an engine tells its ``progress`` listener as it generates, and the progress bar built on it.

An engine reports :class:`Progress` events to ``Engine.progress`` (when set): the token *budget* of each group of
prompts handed to it (prompts x n x max_new_tokens), the tokens generated as they are generated (the vLLM backend
every scheduler step; the transformers backend per finished batch), and the budget each finished completion left
unused. So the work still ahead is bounded from the first report on, and the bound becomes exact as completions
finish: :func:`progress_bar` shows generated tokens against that bound, its rate in tokens/s and an ETA that is an
upper bound at the current rate, instead of a count of finished prompts that stands still while vLLM works through
everything at once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Engine

__all__ = ["Progress", "progress_bar"]


@dataclass(frozen=True)
class Progress:
    """One report; every field counts since the engine's previous report.

    ``queued`` prompts were handed to the engine, which may generate at most ``budget`` tokens for them (prompts x n x
    max_new_tokens); ``tokens`` were generated; the completions that finished left ``unused`` tokens of their budget
    (max_new_tokens minus their own tokens); ``done`` prompts have all their completions. Once an engine has returned
    every group it was handed: sum(tokens) + sum(unused) == sum(budget), sum(done) == sum(queued), and sum(tokens) is
    the number of token ids in the completions it returned."""

    queued: int = 0
    budget: int = 0
    tokens: int = 0
    unused: int = 0
    done: int = 0


@contextlib.contextmanager
def progress_bar(engine: Engine | None, total: int, desc: str):
    """Within the block, a bar of the tokens ``engine`` generates against the most it may still generate (the budget
    of every group handed to it in the block, less what its finished completions left unused), with tokens/s and an
    ETA that is an upper bound at the current rate and exact once every completion has finished; the postfix counts
    completed prompts out of ``total`` (the prompts the caller expects), or out of the prompts queued if more were
    (follow-up passes). A listener set before (a phase counting tokens) keeps receiving every report. Yields the
    tqdm bar (``n``: tokens generated, ``total``: the bound)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=0, desc=desc, unit="tok", unit_scale=True, leave=False, dynamic_ncols=True)
    queued = done = 0
    previous = None if engine is None else engine.progress

    def update(event: Progress) -> None:
        nonlocal queued, done
        queued, done = queued + event.queued, done + event.done
        bar.total += event.budget - event.unused
        bar.set_postfix_str(f"{done}/{max(total, queued)} prompts", refresh=False)
        bar.update(event.tokens)  # redraws at most every mininterval, with the new total and postfix
        if previous is not None:
            previous(event)

    if engine is not None:
        engine.progress = update
    try:
        yield bar
    finally:
        if engine is not None:
            engine.progress = previous
        bar.close()
