"""qlib.course.check: each checker on a right, a nearly right, a wrong and an untouched answer,
an answer that raises, and answers of the wrong shape, dtype or type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qlib.course.check import STATUSES, CheckResult, check_function, check_model, check_value


def stub(*args):
    raise NotImplementedError("Exercise: write the body of stub")


def softmax_ref(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


def softmax_right(x):
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def softmax_nearly(x):  # a small slip: + 1e-3 in the denominator
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / (e.sum(dim=-1, keepdim=True) + 1e-3)


def softmax_wrong(x):  # normalised over the wrong axis
    return torch.softmax(x, dim=0)


def softmax_raises(x):
    return x @ torch.ones(3, 3)  # inner dimensions do not match (x is (*, 5))


INPUTS = [(torch.randn(4, 5, generator=torch.Generator().manual_seed(1)),)]
RANDOM = staticmethod(lambda g: torch.randn(3, 5, generator=g))


# ---------------------------------------------------------------- check_value

def test_value_right_exact_and_within_tolerance():
    r = check_value(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))
    assert r.status == "correct" and r.passed and r.max_diff == 0.0 and "exactly" in str(r)
    r = check_value(0.1 + 0.2, 0.3)
    assert r.passed and "within tolerance" in r.message and r.max_diff < 1e-15


def test_value_nearly_right_reports_largest_difference_and_index():
    expected = torch.arange(12, dtype=torch.float32).reshape(3, 4) + 1
    got = expected.clone()
    got[2, 1] += 0.05          # 0.4% of max 12: over the tolerance, inside close_rtol = 1%
    got[0, 0] += 1e-8          # within tolerance, not the largest
    r = check_value(got, expected)
    assert r.status == "close" and not r.passed
    assert r.where == "(2, 1)" and r.max_diff == pytest.approx(0.05, rel=1e-5)
    assert "index (2, 1)" in r.message and "10.05" in r.message and "1 of 12" in r.message


def test_value_wrong():
    r = check_value(np.array([1.0, 5.0, 3.0]), np.array([1.0, 2.0, 3.0]))
    assert r.status == "wrong" and r.where == "(1,)" and r.max_diff == 3.0
    assert "you return 5, expected 2" in r.message


def test_value_untouched_placeholder():
    r = check_value(..., 3)
    assert r.status == "not attempted" and "Not attempted yet" in str(r)


@pytest.mark.parametrize("got, expected, status, words", [
    (torch.zeros(3), torch.zeros(3, 1), "shape", "shape (3,), expected (3, 1)"),
    (torch.zeros(3, dtype=torch.float64), torch.zeros(3), "dtype", "torch.float64"),
    (np.zeros(2, np.int32), np.zeros(2, np.int64), "dtype", "int32"),
    ([1.0, 2.0], torch.tensor([1.0, 2.0]), "type", "(a list)"),
    (np.zeros(2), torch.zeros(2), "type", "array"),
    (None, 3.0, "type", "forget a `return`"),
    ((1, 2), (1, 2, 3), "shape", "3"),
    ({"a": 1}, {"a": 1, "b": 2}, "shape", "missing ['b']"),
])
def test_value_shape_dtype_type(got, expected, status, words):
    r = check_value(got, expected)
    assert r.status == status and words in r.message


def test_value_nested_structures_name_the_path():
    got = {"median_ms": 1.0, "runs": (torch.tensor([1.0, 2.0]), 3)}
    want = {"median_ms": 1.0, "runs": (torch.tensor([1.0, 9.0]), 3)}
    r = check_value(got, want)
    assert r.status == "wrong" and r.where == "['runs'][0](1,)"
    assert "Wrong in item ['runs'][0] of the answer at index (1,)" in r.message
    assert check_value(want, want).passed


@pytest.mark.parametrize("got, words", [
    ((torch.tensor([1.0, 5.0]), torch.zeros(2)), "Wrong in the first returned tensor at index (1,)"),
    ((torch.tensor([1.0, 2.0]), torch.ones(2)), "Wrong in the second returned tensor at index (0,)"),
    ((torch.tensor([1.0, 2.0]), None), "Wrong type in the second returned tensor: you return None"),
    ((torch.tensor([1.0, 2.0]), torch.zeros(3)), "Wrong shape in the second returned tensor"),
])
def test_value_a_returned_tuple_names_its_item_in_words(got, words):
    r = check_value(got, (torch.tensor([1.0, 2.0]), torch.zeros(2)))
    assert not r.passed and r.message.startswith(words), r.message
    assert "[0]" not in r.message and "[1]" not in r.message


def test_value_a_returned_dict_names_its_key():
    r = check_value({"median_ms": 1.5, "p90_ms": 2.0}, {"median_ms": 1.0, "p90_ms": 2.0})
    assert r.message.startswith("Wrong in the returned entry 'median_ms': you return 1.5")
    assert r.where == "['median_ms']"


def test_function_says_repeated_input_descriptions_once_with_a_count():
    w, vectors = torch.randn(16, 1, 5, 5), [torch.randn(16) for _ in range(5)]

    def fold(w, b, gamma, beta, mean, var, eps):
        return w * gamma.view(-1, 1, 1, 1), b + beta

    def off_by_one(*args):
        weight, bias = fold(*args)
        weight[10, 0, 4, 2] += 1
        return weight, bias

    r = check_function(off_by_one, fold, [(w, *vectors, 1e-5)])
    assert r.message.startswith("Wrong in the first returned tensor at index (10, 0, 4, 2)")
    assert r.message.endswith("(Input 1 of 1: a torch.float32 tensor of shape (16, 1, 5, 5), "
                              "five torch.float32 tensors of shape (16,), 1e-05.)"), r.message
    assert r.message.count("shape (16,)") == 1
    # equal numbers stay listed one by one: their positions are what a learner reads
    r = check_function(lambda a, b, c: a, lambda a, b, c: b + 1, [(2, 2, np.zeros(3))])
    assert "(Input 1 of 1: 2, 2, a float64 array of shape (3,).)" in r.message
    r = check_function(lambda *a: 1 / 0, lambda *a: 0, [(np.zeros(2), np.zeros(2))])
    assert "input 1 of 1 (two float64 arrays of shape (2,))" in r.message


def test_value_nan_matches_only_nan():
    assert check_value(float("nan"), float("nan")).passed
    r = check_value(torch.tensor([0.5, float("nan")]), torch.tensor([0.5, 0.0]))
    assert r.status == "wrong" and "NaN" in r.message and r.where == "(1,)"
    assert check_value(float("inf"), float("inf")).passed
    assert check_value(float("inf"), 1.0).status == "wrong"


def test_value_numbers_and_scalar_tensors_compare_by_value():
    assert check_value(torch.tensor(0.25), 0.25).passed
    assert check_value(np.float32(0.25), 0.25).passed
    assert check_value(320.0, 320).passed
    assert check_value(True, True).passed and check_value(True, False).status == "wrong"
    assert check_value("relu", "relu").passed and check_value("relu", "gelu").status == "wrong"


def test_value_agrees_with_numpy_allclose():
    """Inside the tolerance exactly where np.allclose(value, expected, rtol, atol) says so."""
    g = np.random.default_rng(0)
    for _ in range(200):
        expected = g.normal(size=6) * 10 ** g.uniform(-3, 3)
        got = expected + g.normal(size=6) * 10 ** g.uniform(-9, -1)
        atol, rtol = 10 ** g.uniform(-8, -3), 10 ** g.uniform(-7, -3)
        r = check_value(got, expected, atol=atol, rtol=rtol)
        assert r.passed == np.allclose(got, expected, rtol=rtol, atol=atol)
        assert r.passed or r.max_diff == pytest.approx(np.abs(got - expected).max())


def test_value_dtype_check_can_be_relaxed():
    assert check_value(torch.ones(2, dtype=torch.float64), torch.ones(2), check_dtype=False).passed


@pytest.mark.parametrize("kw", [dict(atol=-1.0), dict(rtol=float("nan")), dict(close_rtol="1")])
def test_value_bad_tolerances(kw):
    with pytest.raises(ValueError, match="must be a finite number"):
        check_value(1.0, 1.0, **kw)


def test_result_prints_as_its_message():
    r = CheckResult("wrong", "Wrong: you return 2, expected 3.")
    assert str(r) == repr(r) == "Wrong: you return 2, expected 3." and not r.passed
    assert set(STATUSES) >= {"correct", "close", "wrong", "shape", "dtype", "type", "error",
                             "not attempted"}


# ------------------------------------------------------------- check_function

def test_function_right():
    r = check_function(softmax_right, softmax_ref, INPUTS, random=RANDOM, trials=5)
    assert r.passed and "all 6 inputs" in r.message


def test_function_nearly_right():
    r = check_function(softmax_nearly, softmax_ref, INPUTS, random=RANDOM)
    assert r.status == "close" and r.input_index == 0 and r.where is not None
    assert "Input 1 of 6" in r.message and "index" in r.message


def test_function_wrong():
    r = check_function(softmax_wrong, softmax_ref, INPUTS, random=RANDOM)
    assert r.status == "wrong" and "Wrong" in r.message


def test_function_untouched():
    r = check_function(stub, softmax_ref, INPUTS)
    assert r.status == "not attempted" and "NotImplementedError" in r.message


def test_function_raises():
    r = check_function(softmax_raises, softmax_ref, INPUTS)
    assert r.status == "error" and "RuntimeError" in r.message and "x @ torch.ones" in r.message
    assert "input 1 of 1" in r.message and "float32 tensor of shape (4, 5)" in r.message


def test_function_other_not_implemented_errors_are_errors():
    def uses_missing_kernel(x):
        raise NotImplementedError("aten::foo is not implemented for 'QuantizedCPU'")
    assert check_function(uses_missing_kernel, softmax_ref, INPUTS).status == "error"


def test_function_reports_the_worst_problem_first_seen():
    def only_big_inputs_fail(n):
        return n * n if n < 10 else n * n + 50
    r = check_function(only_big_inputs_fail, lambda n: n ** 2, [(2,), (3,), (20,), (30,)])
    assert r.status == "wrong" and r.input_index == 2 and "Input 3 of 4: 20" in r.message


def test_function_inputs_are_copied_for_each_call():
    def mutates(x):
        x += 1
        return x
    x = torch.zeros(3)
    r = check_function(mutates, lambda x: x + 1, [(x,)])
    assert r.passed and torch.equal(x, torch.zeros(3))


def test_function_random_inputs_are_seeded():
    seen = []
    def record(x):
        seen.append(x.clone())
        return x
    check_function(record, lambda x: x, random=lambda g: torch.rand(2, generator=g), trials=3,
                   seed=7)
    again = [torch.rand(2, generator=g) for g in [torch.Generator().manual_seed(7)]
             for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(seen, again))


def test_function_non_tuple_input_is_one_argument():
    assert check_function(len, len, [[1, 2, 3], ([4],)]).passed


def test_function_bad_arguments():
    with pytest.raises(TypeError, match="callables"):
        check_function(3, softmax_ref, INPUTS)
    with pytest.raises(ValueError, match="at least one input"):
        check_function(softmax_right, softmax_ref, [])
    with pytest.raises(TypeError, match="list of argument tuples"):
        check_function(softmax_right, softmax_ref, torch.zeros(3))
    with pytest.raises(ValueError, match="trials"):
        check_function(softmax_right, softmax_ref, INPUTS, random=RANDOM, trials=-1)


# ---------------------------------------------------------------- check_model

class TinyRef(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class TinyMine(nn.Module):
    """Other attribute names, the same tensors in the same order."""

    def __init__(self, slip: float = 0.0, act=torch.relu, stub: bool = False) -> None:
        super().__init__()
        if stub:
            raise NotImplementedError("Exercise: write the body of __init__")
        self.a, self.b, self.c = nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)
        self.slip, self.act = slip, act

    def forward(self, x):
        return self.c(self.act(self.b(self.a(x)))) + self.slip


@pytest.fixture()
def ref():
    torch.manual_seed(0)
    m = TinyRef()
    m.bn.running_mean.uniform_(-1, 1)  # eval mode must use these, not batch statistics
    return m.train()


X = [(torch.randn(6, 4, generator=torch.Generator().manual_seed(2)),)]


def test_model_right_copies_weights_by_order(ref):
    r = check_model(TinyMine, ref, X, random=lambda g: torch.randn(5, 4, generator=g))
    assert r.passed, r


def test_model_nearly_right(ref):
    r = check_model(lambda: TinyMine(slip=2e-3), ref, X)
    assert r.status == "close" and r.max_diff == pytest.approx(2e-3, rel=1e-3)


def test_model_wrong(ref):
    r = check_model(lambda: TinyMine(act=torch.tanh), ref, X)
    assert r.status == "wrong"


def test_model_untouched(ref):
    assert check_model(lambda: TinyMine(stub=True), ref, X).status == "not attempted"

    class StubForward(TinyMine):
        def forward(self, x):
            raise NotImplementedError("Exercise: write the body of forward")
    assert check_model(StubForward(), ref, X).status == "not attempted"


def test_model_raises(ref):
    class Broken(TinyMine):
        def forward(self, x):
            return self.c(x)
    r = check_model(Broken, ref, X)
    assert r.status == "error" and "RuntimeError" in r.message


def test_model_parameters_that_do_not_line_up(ref):
    r = check_model(lambda: nn.Sequential(nn.Linear(4, 3)), ref, X)
    assert r.status == "shape" and "do not line up" in r.message


def test_model_builder_returning_something_else(ref):
    assert check_model(lambda: None, ref, X).status == "type"


def test_model_leaves_both_models_unchanged(ref):
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    mine = TinyMine()
    mine_before = {k: v.clone() for k, v in mine.state_dict().items()}
    assert check_model(mine, ref, X).passed
    assert ref.training and mine.training
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    assert all(torch.equal(mine_before[k], v) for k, v in mine.state_dict().items())


def test_model_without_copying_weights(ref):
    torch.manual_seed(0)
    own = TinyRef()
    assert check_model(own, ref, X, copy_weights=False).status == "wrong"  # running stats


def test_model_bad_arguments(ref):
    with pytest.raises(TypeError, match="reference must be an nn.Module"):
        check_model(TinyMine, lambda x: x, X)
    with pytest.raises(TypeError, match="answer must be"):
        check_model(3, ref, X)
