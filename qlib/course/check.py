"""Exercise checkers: compare a learner's answer with the reference and say what is wrong.

Introduced in notebook 00's exercises, used by every notebook's exercises. A checker never
raises because of the learner's answer (so a student copy with nothing solved still runs
to the end); it returns a :class:`CheckResult` that prints as one or two plain sentences.
``status`` is one of

    "correct"        equal to the reference, exactly or within atol + rtol * |expected|
    "close"          off by more than the tolerance but by at most close_rtol * max|expected|
                     (a rounding step, a small missing term): the largest difference and
                     its index are reported
    "wrong"          further off; the first differing input, the value and the index
    "shape"          an array of the wrong shape, or a tuple / dict of the wrong length / keys
    "dtype"          the right shape but another dtype (float64 for float32, int for bool)
    "type"           another kind of thing: a list for a tensor, None (a missing return)
    "error"          the answer raised an exception: its type, message and line
    "not attempted"  the stub still raises NotImplementedError

Only "correct" passes. Values compare recursively: numbers, tensors, NumPy arrays, tuples,
lists and dicts.

>>> check_value(0.5 + 1e-9, 0.5).status
'correct'
>>> print(check_function(lambda x: x * 2, lambda x: x + x, [(torch.arange(3),)]))
Correct: matches the reference exactly on its one input.
"""

from __future__ import annotations

import copy
import math
import numbers
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["CheckResult", "check_value", "check_function", "check_model", "STATUSES"]

STATUSES = ("correct", "close", "wrong", "shape", "dtype", "type", "error", "not attempted")
_RANK = {s: i for i, s in enumerate(STATUSES)}  # worse statuses rank higher


@dataclass(frozen=True)
class CheckResult:
    """What a checker found: ``status`` (one of STATUSES) and a plain-sentence ``message``.

    ``max_diff`` / ``where`` give the largest difference and its index for numeric answers;
    ``input_index`` the (0-based) input the message is about. Prints as its message.
    """

    status: str
    message: str
    max_diff: float | None = None
    where: str | None = None
    input_index: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == "correct"

    def __str__(self) -> str:
        return self.message

    __repr__ = __str__


def _fmt(x: Any) -> str:
    """A short description of an answer or an input, for messages."""
    def a(word: str) -> str:
        return f"{'an' if word[0].lower() in 'aeiou' else 'a'} {word}"

    if isinstance(x, Tensor):
        if x.numel() == 1:
            return f"tensor({x.item():.6g})" if x.is_floating_point() else f"tensor({x.item()})"
        return a(f"{x.dtype} tensor of shape {tuple(x.shape)}")
    if isinstance(x, np.ndarray):
        return a(f"{x.dtype} array of shape {x.shape}")
    if isinstance(x, float):
        return f"{x:.6g}"
    if isinstance(x, nn.Module):
        return a(type(x).__name__)
    text = repr(x)
    if callable(x) and hasattr(x, "__name__"):
        return x.__name__
    if " object at 0x" in text:  # the default repr says nothing useful
        return a(type(x).__name__)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_args(args: tuple) -> str:
    """The inputs of one call, a run of equal descriptions said once with its count:
    "a torch.float32 tensor of shape (16, 1, 5, 5), five torch.float32 tensors of shape (16,),
    1e-05" (not the same words five times)."""
    descriptions = [_fmt(a) for a in args]
    out: list[str] = []
    i = 0
    while i < len(descriptions):
        j = i
        while j + 1 < len(descriptions) and descriptions[j + 1] == descriptions[i]:
            j += 1
        text, n = descriptions[i], j - i + 1
        plural = text.split(" ", 1)[1].replace(" tensor of ", " tensors of ", 1).replace(
            " array of ", " arrays of ", 1) if n > 1 and text.startswith(("a ", "an ")) else ""
        count = _NUMBERS[n] if n < len(_NUMBERS) else str(n)
        out.append(f"{count} {plural}" if plural else ", ".join([text] * n))
        i = j + 1
    return ", ".join(out)


_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
            "ten")
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
             "ninth", "tenth")


def _place(steps: tuple, expected: Any) -> str:
    """Where in a returned tuple / list / dict a message is about, in words: " in the first
    returned tensor", " in the returned entry 'median_ms'", " in item [0][1] of the answer"."""
    if not steps:
        return ""
    if len(steps) > 1:
        return " in item " + "".join(f"[{s!r}]" for s in steps) + " of the answer"
    step = steps[0]
    if not isinstance(step, int):
        return f" in the returned entry {step!r}"
    noun = {"tensor": "tensor", "array": "array", "number": "number", "bool": "bool",
            "sequence": type(expected).__name__, "dict": "dict"}.get(_kind(expected), "value")
    nth = _ORDINALS[step] if step < len(_ORDINALS) else f"number {step + 1} of the"
    return f" in the {nth} returned {noun}"


def _kind(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, (bool, np.bool_)):
        return "bool"
    if isinstance(x, numbers.Number):  # int, float, NumPy scalars
        return "number"
    return {Tensor: "tensor", np.ndarray: "array", tuple: "sequence", list: "sequence",
            dict: "dict"}.get(type(x), type(x).__name__)


def _kind_note(x: Any) -> str:
    """' (a list)' where the short description does not already say what kind x is."""
    kind = _kind(x)
    return "" if kind in ("None", "number", "bool", "tensor", "array") or isinstance(
        x, nn.Module) else f" (a {type(x).__name__})"


def _as_array(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _compare(value: Any, expected: Any, atol: float, rtol: float, close_rtol: float,
             check_dtype: bool, path: str = "", steps: tuple = ()) -> CheckResult:
    """Compare one answer with one expected value (recursively for tuples, lists, dicts).

    ``path`` is the machine-readable place ("[0]", "['runs'][0]"), ``steps`` the same keys
    for the message (see :func:`_place`)."""
    at = _place(steps, expected)
    if value is Ellipsis:
        return CheckResult("not attempted", "Not attempted yet: the answer is still `...`.")
    kind_v, kind_e = _kind(value), _kind(expected)
    # a 0-d tensor where a number is expected (or the reverse) is accepted by value
    if kind_e == "number" and isinstance(value, Tensor) and value.numel() == 1:
        value, kind_v = value.item(), "number"
    if kind_v == "number" and isinstance(expected, Tensor) and expected.ndim == 0:
        expected, kind_e = expected.item(), "number"
    if kind_v != kind_e and {kind_v, kind_e} != {"bool", "number"}:
        hint = " Did you forget a `return`?" if value is None else ""
        return CheckResult("type", f"Wrong type{at}: you return {_fmt(value)}"
                           f"{_kind_note(value)}, expected {_fmt(expected)}"
                           f"{_kind_note(expected)}.{hint}")
    if kind_e == "sequence":
        if len(value) != len(expected):
            return CheckResult("shape", f"Wrong length{at}: you return {len(value)} items, "
                               f"expected {len(expected)}.")
        parts = [_compare(v, e, atol, rtol, close_rtol, check_dtype, f"{path}[{i}]",
                          (*steps, i)) for i, (v, e) in enumerate(zip(value, expected))]
        return _worst(parts)
    if kind_e == "dict":
        if set(value) != set(expected):
            missing, extra = sorted(map(str, set(expected) - set(value))), sorted(
                map(str, set(value) - set(expected)))
            return CheckResult("shape", f"Wrong keys{at}: missing {missing}, unexpected {extra}.")
        parts = [_compare(value[k], expected[k], atol, rtol, close_rtol, check_dtype,
                          f"{path}[{k!r}]", (*steps, k)) for k in expected]
        return _worst(parts)
    if kind_e not in ("number", "bool", "tensor", "array"):
        ok = value == expected
        return CheckResult("correct" if ok else "wrong", "Correct." if ok else
                           f"Wrong{at}: you return {_fmt(value)}, expected {_fmt(expected)}.")
    v, e = _as_array(value), _as_array(expected)
    if v.shape != e.shape:
        return CheckResult("shape", f"Wrong shape{at}: you return shape {tuple(v.shape)}, "
                           f"expected {tuple(e.shape)}.")
    if check_dtype and kind_e in ("tensor", "array") and value.dtype != expected.dtype:
        return CheckResult("dtype", f"Wrong dtype{at}: you return {value.dtype}, expected "
                           f"{expected.dtype} (the values may be right; convert with .to / "
                           ".astype).")
    v64, e64 = v.astype(np.float64), e.astype(np.float64)
    nan_v, nan_e = np.isnan(v64), np.isnan(e64)
    with np.errstate(invalid="ignore"):  # inf - inf
        diff = np.abs(v64 - e64)
    diff = np.where(nan_v & nan_e, 0.0, diff)
    diff = np.where(nan_v ^ nan_e, np.inf, diff)  # NaN against a number: as far as can be
    diff = np.where(np.isinf(v64) & (v64 == e64), 0.0, diff)
    if diff.size == 0 or not diff.any():
        return CheckResult("correct", "Correct: matches the reference exactly.", 0.0)
    flat = int(np.argmax(diff))
    idx = np.unravel_index(flat, diff.shape) if diff.ndim else ()
    index = str(tuple(int(i) for i in idx)) if idx else ""
    where = (path + index) or None  # e.g. "(3, 1)", "['median_ms']", "[0](2,)"
    loc = at + (f" at index {index}" if index else "")  # " in the first returned tensor at index (2,)"
    biggest, got, want = float(diff.flat[flat]), v64.flat[flat], e64.flat[flat]
    bad_tol = diff > atol + rtol * np.abs(e64)
    if not bad_tol.any():
        return CheckResult("correct", f"Correct: matches the reference within tolerance "
                           f"(largest difference {biggest:.2g}{loc}).", biggest, where)
    counts = f"{int(bad_tol.sum())} of {diff.size} entries differ; " if diff.size > 1 else ""
    detail = f"you return {got:.6g}, expected {want:.6g} " + (
        "(NaN often comes from 0 / 0)" if np.isnan(got) or np.isnan(want)
        else f"({counts}largest difference {biggest:.3g})")
    scale = float(np.abs(e64[np.isfinite(e64)]).max(initial=0.0))  # the answer's magnitude
    if biggest <= atol + close_rtol * scale:
        return CheckResult("close", f"Close, but not within tolerance{loc}: {detail}. Look "
                           "for something small: a rounding step, a missing term, an average "
                           "over the wrong things.", biggest, where)
    return CheckResult("wrong", f"Wrong{loc}: {detail}.", biggest, where)


def _worst(parts: list[CheckResult]) -> CheckResult:
    """The worst of the parts of a tuple / list / dict answer, or one 'correct'."""
    worst = max(parts, key=lambda r: _RANK[r.status]) if parts else None
    if worst is None or worst.passed:
        diffs = [r.max_diff for r in parts if r.max_diff]
        if diffs:
            return CheckResult("correct", f"Correct: matches the reference within tolerance "
                               f"(largest difference {max(diffs):.2g}).", max(diffs))
        return CheckResult("correct", "Correct: matches the reference exactly.", 0.0)
    return worst


def _check_tolerances(atol: float, rtol: float, close_rtol: float) -> None:
    for name, tol in (("atol", atol), ("rtol", rtol), ("close_rtol", close_rtol)):
        if not isinstance(tol, (int, float)) or not tol >= 0 or math.isinf(tol):
            raise ValueError(f"{name} must be a finite number >= 0, got {tol!r}")


def check_value(value: Any, expected: Any, *, atol: float = 1e-6, rtol: float = 1e-5,
                close_rtol: float = 1e-2, check_dtype: bool = True) -> CheckResult:
    """Compare one answer (a number, tensor or array, or a tuple / list / dict of them).

    Introduced in notebook 00. Correct where ``|value - expected| <= atol + rtol *
    |expected|`` everywhere (NaN matches only NaN); close where the largest difference is
    ``<= atol + close_rtol * max|expected|`` (on the scale of the whole answer). ``...``
    (the placeholder of an untouched ``answer = ...``) is "not attempted".

    >>> check_value(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5])).where
    '(1,)'
    """
    _check_tolerances(atol, rtol, close_rtol)
    return _compare(value, expected, atol, rtol, close_rtol, check_dtype)


def _call(fn: Callable[..., Any], args: tuple) -> tuple[Any, BaseException | None]:
    try:
        return fn(*copy.deepcopy(args)), None  # a copy: an answer that mutates its input
    except Exception as err:  # noqa: BLE001 - the learner's exception is the message
        return None, err


def _error_result(err: BaseException, i: int, n: int, args: tuple) -> CheckResult:
    if isinstance(err, NotImplementedError) and (not err.args or
                                                 str(err.args[0]).startswith("Exercise")):
        return CheckResult("not attempted", "Not attempted yet: the function still raises "
                           "NotImplementedError. Replace that line with your code.")
    frames = traceback.extract_tb(err.__traceback__)
    line = f" (in line `{frames[-1].line}`)" if frames and frames[-1].line else ""
    return CheckResult("error", f"Your code raised {type(err).__name__}: {err}{line}, on "
                       f"input {i + 1} of {n} ({_describe_args(args)}).", input_index=i)


def _inputs(inputs: Sequence[Any], random: Callable[[torch.Generator], Any] | None,
            trials: int, seed: int) -> list[tuple]:
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(f"inputs must be a list of argument tuples, got {type(inputs).__name__}")
    if not isinstance(trials, int) or trials < 0:
        raise ValueError(f"trials must be an int >= 0, got {trials!r}")
    out = [a if isinstance(a, tuple) else (a,) for a in inputs]
    if random is not None:
        gen = torch.Generator().manual_seed(seed)
        out += [(lambda a: a if isinstance(a, tuple) else (a,))(random(gen))
                for _ in range(trials)]
    if not out:
        raise ValueError("give at least one input (inputs, or random with trials >= 1)")
    return out


def check_function(answer: Callable[..., Any], reference: Callable[..., Any],
                   inputs: Sequence[Any] = (), *, random: Callable[[torch.Generator], Any]
                   | None = None, trials: int = 5, seed: int = 0, atol: float = 1e-6,
                   rtol: float = 1e-5, close_rtol: float = 1e-2, check_dtype: bool = True
                   ) -> CheckResult:
    """Call ``answer`` and ``reference`` on the same inputs and compare each pair of results.

    Introduced in notebook 00. ``inputs``: a list of argument tuples (a non-tuple is one
    argument); ``random(generator)`` makes ``trials`` more, seeded by ``seed``. Each call
    gets its own deep copy of the arguments. The result is about the first input that
    shows the worst problem; see :func:`check_value` for the tolerances.

    >>> check_function(lambda n: n * n, lambda n: n ** 2, [(3,), (4,)]).passed
    True
    """
    _check_tolerances(atol, rtol, close_rtol)
    if not callable(answer) or not callable(reference):
        raise TypeError(f"answer and reference must be callables, got {_fmt(answer)} and "
                        f"{_fmt(reference)}")
    cases = _inputs(inputs, random, trials, seed)
    worst: CheckResult | None = None
    diffs: list[float] = []
    for i, args in enumerate(cases):
        got, err = _call(answer, args)
        if err is not None:
            return _error_result(err, i, len(cases), args)
        expected = reference(*copy.deepcopy(args))  # a failing reference is a course bug
        r = _compare(got, expected, atol, rtol, close_rtol, check_dtype)
        if r.max_diff is not None and r.passed:
            diffs.append(r.max_diff)
        if not r.passed and (worst is None or _RANK[r.status] > _RANK[worst.status]):
            worst = CheckResult(r.status, f"{r.message} (Input {i + 1} of {len(cases)}: "
                                f"{_describe_args(args)}.)", r.max_diff, r.where, i)
    if worst is not None:
        return worst
    big = max(diffs, default=0.0)
    how = "exactly" if big == 0 else f"within tolerance (largest difference {big:.2g})"
    on = "its one input" if len(cases) == 1 else f"all {len(cases)} inputs"
    return CheckResult("correct", f"Correct: matches the reference {how} on {on}.", big)


def _align_weights(answer: nn.Module, reference: nn.Module) -> str | None:
    """Load the reference's state into ``answer``: by name, else by order; a reason if not."""
    ref, mine = reference.state_dict(), answer.state_dict()
    if list(ref) == list(mine) or set(ref) == set(mine):
        try:
            answer.load_state_dict(ref)
            return None
        except RuntimeError as err:
            return str(err).splitlines()[-1].strip()
    shapes_ref = [tuple(t.shape) for t in ref.values()]
    shapes_mine = [tuple(t.shape) for t in mine.values()]
    if shapes_ref != shapes_mine:
        return (f"your model holds {len(mine)} tensors of shapes {shapes_mine}, the reference "
                f"{len(ref)} of shapes {shapes_ref}")
    answer.load_state_dict(dict(zip(mine, ref.values())))
    return None


def check_model(answer: nn.Module | Callable[[], nn.Module], reference: nn.Module,
                inputs: Sequence[Any] = (), *, copy_weights: bool = True,
                random: Callable[[torch.Generator], Any] | None = None, trials: int = 5,
                seed: int = 0, atol: float = 1e-5, rtol: float = 1e-4,
                close_rtol: float = 1e-2, check_dtype: bool = True) -> CheckResult:
    """Compare a learner's model with the reference on the same inputs, in eval mode.

    Introduced in notebook 00. ``answer`` is a module or a zero-argument callable that
    builds one (a class, a lambda), so a stub raising in ``__init__`` reads "not attempted".
    With ``copy_weights`` the reference's state is loaded into (a copy of) the answer, by
    parameter name, or by order where names differ but shapes line up, so only the forward
    computation is compared. Neither model is changed; both run under ``torch.no_grad``.

    >>> lin = nn.Linear(3, 2); check_model(lambda: nn.Linear(3, 2), lin, [torch.ones(1, 3)]).passed
    True
    """
    if not isinstance(reference, nn.Module):
        raise TypeError(f"reference must be an nn.Module, got {_fmt(reference)}")
    if isinstance(answer, nn.Module):
        model = copy.deepcopy(answer)
    elif callable(answer):
        model, err = _call(answer, ())
        if err is not None:
            return _error_result(err, 0, 1, ())
        if not isinstance(model, nn.Module):
            return CheckResult("type", f"Wrong type: your builder returns {_fmt(model)}, "
                               "expected an nn.Module.")
    else:
        raise TypeError(f"answer must be an nn.Module or a callable building one, got "
                        f"{_fmt(answer)}")
    if copy_weights:
        problem = _align_weights(model, reference)
        if problem:
            return CheckResult("shape", f"Your model's parameters do not line up with the "
                               f"reference's: {problem}.")
    was_training = reference.training
    model.eval(), reference.eval()
    try:
        with torch.no_grad():
            return check_function(model, reference, inputs, random=random, trials=trials,
                                  seed=seed, atol=atol, rtol=rtol, close_rtol=close_rtol,
                                  check_dtype=check_dtype)
    finally:
        reference.train(was_training)
