"""Bad input to functional_bp.feedback: every public function and the training gradient
refuse it before any maths, with the exception type and a message that names the
argument (rule, feedback, scale, key, params) or the hidden layer at fault."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_problem

import functional_bp as fbp
from functional_bp import feedback, training
from functional_bp.feedback import FeedbackParams, RuleGradient

SIZES = [5, 7, 4, 3]  # two hidden layers: fa's B is [(4, 7), (3, 4)], dfa's [(3, 7), (3, 4)]
KEY = jax.random.key(0)


@functools.lru_cache
def _problem():
    params, xs, ys = random_problem(1200, batch=3, sizes=SIZES)
    runs = training.many(fbp.init_mlp, per_run=["key"])(jax.random.split(KEY, 2), SIZES)
    single, xs1, ys1 = random_problem(1201, batch=3, sizes=[5, 3])  # no hidden layer
    return types.SimpleNamespace(
        params=params,
        xs=xs,
        ys=ys,
        fa=feedback.init_feedback(KEY, params, "fa"),
        dfa=feedback.init_feedback(KEY, params, "dfa"),
        frsf=feedback.init_feedback(KEY, params, "frsf"),
        runs=runs,
        single=single,
        xs1=xs1,
        ys1=ys1,
    )


def _cast(matrices, dtype, layers=(0, 1)):
    return [b.astype(dtype) if l in layers else b for l, b in enumerate(matrices)]


def _grad(p, matrices, **options):
    return feedback.feedback_grad(p.params, matrices, p.xs, p.ys, **options)


def _train(p, state, gradient, key=None):
    optimizer = optax.sgd(0.1)
    return training.train_step(
        key, optimizer, state, optimizer.init(state), p.xs, p.ys, gradient=gradient
    )


def _float32(p):
    return jax.tree.map(lambda a: a.astype(jnp.float32), p.params)


CASES = {
    # init_feedback: the rule, the key, the params (one network's), the scale.
    "init unknown rule": (
        lambda p: feedback.init_feedback(KEY, p.params, "backprop"),
        ValueError,
        r"Unknown rule 'backprop'; expected one of \['fa', 'dfa', 'sign', 'kp', 'usf', 'brsf'",
    ),
    "init rule an int": (
        lambda p: feedback.init_feedback(KEY, p.params, 1),
        TypeError,
        r"Expected rule to be a str, one of .*got int 1",
    ),
    "init rule None": (
        lambda p: feedback.init_feedback(KEY, p.params, None),
        TypeError,
        r"Expected rule to be a str.*got NoneType",
    ),
    "init rule in place of params": (
        lambda p: feedback.init_feedback(KEY, "fa", p.params),
        TypeError,
        r"init_feedback got the rule 'fa' as its params argument; "
        r"call init_feedback\(key, params, 'fa'\)",
    ),
    "init rule missing": (
        lambda p: feedback.init_feedback(KEY, p.params),
        TypeError,
        r"missing 1 required positional argument: 'rule'",
    ),
    "init key an int": (
        lambda p: feedback.init_feedback(0, p.params, "fa"),
        TypeError,
        r"Expected key to be a jax.random key",
    ),
    "init params with a run axis (fa)": (
        lambda p: feedback.init_feedback(KEY, p.runs, "fa"),
        ValueError,
        r"init_feedback takes one network's params \(layer 1 w of rank 2\), got layer 1 w of "
        r"shape \(2, 7, 5\).*jax\.vmap\(lambda k, p: init_feedback\(k, p, rule\)\)\(keys, "
        r"params\)",
    ),
    "init params with a run axis (dfa)": (
        lambda p: feedback.init_feedback(KEY, p.runs, "dfa"),
        ValueError,
        r"init_feedback takes one network's params.*For many runs use jax\.vmap",
    ),
    "init params with a run axis (sign)": (
        lambda p: feedback.init_feedback(KEY, p.runs, "sign"),
        ValueError,
        r"init_feedback takes one network's params.*leading run axis",
    ),
    "init params a dict": (
        lambda p: feedback.init_feedback(KEY, {"w": p.params[0].w}, "fa"),
        TypeError,
        r"Expected params to be a non-empty list of Layer\(w, b\), got dict",
    ),
    "init scale zero": (
        lambda p: feedback.init_feedback(KEY, p.params, "fa", scale=0.0),
        ValueError,
        r"Expected scale to be a finite number > 0, got 0.0",
    ),
    "init scale negative": (
        lambda p: feedback.init_feedback(KEY, p.params, "frsf", scale=-1),
        ValueError,
        r"Expected scale to be a finite number > 0, got -1.0",
    ),
    "init scale NaN": (
        lambda p: feedback.init_feedback(KEY, p.params, "kp", scale=float("nan")),
        ValueError,
        r"Expected scale to be a finite number > 0, got nan",
    ),
    "init scale inf": (
        lambda p: feedback.init_feedback(KEY, p.params, "dfa", scale=np.inf),
        ValueError,
        r"Expected scale to be a finite number > 0, got inf",
    ),
    "init scale a str": (
        lambda p: feedback.init_feedback(KEY, p.params, "fa", scale="0.1"),
        TypeError,
        r"Expected scale to be a number > 0, got str '0.1'",
    ),
    "init scale a bool": (
        lambda p: feedback.init_feedback(KEY, p.params, "fa", scale=True),
        TypeError,
        r"Expected scale to be a number > 0, got bool True",
    ),
    "init scale for sign": (
        lambda p: feedback.init_feedback(KEY, p.params, "sign", scale=0.5),
        ValueError,
        r"init_feedback draws no matrices for rule 'sign'.*feedback_grad\(\.\.\., "
        r"rule='sign', scale=\.\.\.\)",
    ),
    "init scale for usf": (
        lambda p: feedback.init_feedback(KEY, p.params, "usf", scale=0.5),
        ValueError,
        r"init_feedback draws no matrices for rule 'usf'.*RuleGradient\('usf', scale",
    ),
    "init scale for brsf": (
        lambda p: feedback.init_feedback(KEY, p.params, "brsf", scale=0.5),
        ValueError,
        r"init_feedback draws no matrices for rule 'brsf'",
    ),
    "init scale for bp": (
        lambda p: feedback.init_feedback(KEY, p.params, "bp", scale=0.5),
        ValueError,
        r"init_feedback draws no matrices for rule 'bp'.*bp has none",
    ),
    # feedback_grad: the rule and the options, by keyword.
    "grad rule given positionally": (
        lambda p: feedback.feedback_grad(p.params, None, p.xs, p.ys, "sign"),
        TypeError,
        r"feedback_grad takes 4 positional arguments \(params, feedback, xs, ys\), got 5: "
        r"pass the others by keyword \(rule=, net=, scale=, key=\); the extra one is str 'sign'",
    ),
    "grad net given positionally": (
        lambda p: feedback.feedback_grad(p.params, None, p.xs, p.ys, fbp.Network()),
        TypeError,
        r"feedback_grad takes 4 positional.*by keyword \(rule=, net=, scale=, key=\).*Network",
    ),
    "grad rule as the feedback": (
        lambda p: feedback.feedback_grad(p.params, "sign", p.xs, p.ys),
        TypeError,
        r"feedback_grad got the rule 'sign' as its feedback argument; pass rule='sign' "
        r"\(keyword\) and feedback=None",
    ),
    "grad rule as the feedback of fa": (
        lambda p: feedback.feedback_grad(p.params, "fa", p.xs, p.ys),
        TypeError,
        r"got the rule 'fa' as its feedback.*feedback=init_feedback\(key, params, 'fa'\)",
    ),
    "grad rule missing": (
        lambda p: feedback.feedback_grad(p.params, p.fa, p.xs, p.ys),
        TypeError,
        r"feedback_grad\(\) needs rule=, one of \['fa'",
    ),
    "grad rule an int": (
        lambda p: _grad(p, p.fa, rule=0),
        TypeError,
        r"Expected rule to be a str, one of .*got int 0",
    ),
    "grad rule a list": (
        lambda p: _grad(p, p.fa, rule=["fa"]),
        TypeError,
        r"Expected rule to be .*got list \['fa'\]",
    ),
    "grad unknown rule": (
        lambda p: _grad(p, p.fa, rule="FA"),
        ValueError,
        r"Unknown rule 'FA'",
    ),
    "grad unknown keyword": (
        lambda p: _grad(p, p.fa, rule="fa", scales=1.0),
        TypeError,
        r"feedback_grad\(\) got an unexpected keyword argument 'scales'",
    ),
    # The feedback matrices: dtype (the params'), shape per rule, count.
    "grad int32 feedback": (
        lambda p: _grad(p, _cast(p.fa, jnp.int32), rule="fa"),
        TypeError,
        r"feedback matrix of hidden layer 1 to have a real floating dtype, the params' "
        r"float64, got int32",
    ),
    "grad int32 feedback on layer 2": (
        lambda p: _grad(p, _cast(p.fa, jnp.int32, layers=(1,)), rule="kp"),
        TypeError,
        r"feedback matrix of hidden layer 2 to have a real floating dtype.*int32",
    ),
    "grad bool feedback": (
        lambda p: _grad(p, _cast(p.dfa, jnp.bool_), rule="dfa"),
        TypeError,
        r"hidden layer 1 to have a real floating dtype.*got bool",
    ),
    "grad complex feedback": (
        lambda p: _grad(p, _cast(p.frsf, jnp.complex128), rule="frsf"),
        TypeError,
        r"hidden layer 1 to have a real floating dtype.*got complex128",
    ),
    "grad float32 feedback, float64 params": (
        lambda p: _grad(p, _cast(p.fa, jnp.float32), rule="fa"),
        TypeError,
        r"hidden layer 1 to have the params' dtype float64, got float32",
    ),
    "grad float16 feedback, float32 params": (
        lambda p: feedback.feedback_grad(
            _float32(p), _cast(p.fa, jnp.float16), p.xs, p.ys, rule="fa"
        ),
        TypeError,
        r"hidden layer 1 to have the params' dtype float32, got float16",
    ),
    "grad a nested list as a matrix": (
        lambda p: _grad(p, [np.asarray(p.fa[0]).tolist(), p.fa[1]], rule="fa"),
        TypeError,
        r"feedback matrix of hidden layer 1 to be an array, got list",
    ),
    "grad fa transposed": (
        lambda p: _grad(p, [p.fa[0].T, p.fa[1]], rule="fa"),
        ValueError,
        r"hidden layer 1 to have shape \(4, 7\) \(w\^2's for rule 'fa'\), got \(7, 4\)",
    ),
    "grad fa's matrices for dfa": (
        lambda p: _grad(p, p.fa, rule="dfa"),
        ValueError,
        r"hidden layer 1 to have shape \(3, 7\) \(\(n_L, n_l\) for rule 'dfa'\), got \(4, 7\)",
    ),
    "grad dfa's matrices for kp": (
        lambda p: _grad(p, p.dfa, rule="kp"),
        ValueError,
        r"hidden layer 1 to have shape \(4, 7\) \(w\^2's for rule 'kp'\), got \(3, 7\)",
    ),
    "grad frsf wrong shape on layer 2": (
        lambda p: _grad(p, [p.frsf[0], p.frsf[1][:, :2]], rule="frsf"),
        ValueError,
        r"hidden layer 2 to have shape \(3, 4\) \(w\^3's for rule 'frsf'\), got \(3, 2\)",
    ),
    "grad too few": (
        lambda p: _grad(p, p.fa[:1], rule="kp"),
        ValueError,
        r"Expected 2 feedback matrices for rule 'kp' \(one per hidden layer\), got 1; make "
        r"them with init_feedback\(key, params, 'kp'\)",
    ),
    "grad too many": (
        lambda p: _grad(p, [*p.fa, p.fa[1]], rule="fa"),
        ValueError,
        r"Expected 2 feedback matrices for rule 'fa'.*got 3",
    ),
    "grad None for fa": (
        lambda p: _grad(p, None, rule="fa"),
        ValueError,
        r"Expected 2 feedback matrices for rule 'fa'.*got NoneType",
    ),
    "grad one array for frsf": (
        lambda p: _grad(p, p.frsf[0], rule="frsf"),
        ValueError,
        r"Expected 2 feedback matrices for rule 'frsf'.*got one array of shape \(4, 7\) "
        r"\(pass a list\)",
    ),
    "grad matrices for sign": (
        lambda p: _grad(p, p.fa, rule="sign"),
        ValueError,
        r"Rule 'sign' uses no feedback matrices \(B\^l = scale sign\(w\^\{l\+1\}\)\); "
        r"expected feedback=None, got list",
    ),
    "grad matrices for bp": (
        lambda p: _grad(p, p.fa, rule="bp"),
        ValueError,
        r"Rule 'bp' uses no feedback matrices \(B\^l = w\^\{l\+1\}\)",
    ),
    "grad matrices for brsf": (
        lambda p: _grad(p, p.frsf, rule="brsf", key=KEY),
        ValueError,
        r"Rule 'brsf' uses no feedback matrices",
    ),
    "grad a matrix for a network with no hidden layer": (
        lambda p: feedback.feedback_grad(p.single, [p.single[0].w], p.xs1, p.ys1, rule="fa"),
        ValueError,
        r"Expected 0 feedback matrices for rule 'fa' \(one per hidden layer: the network has "
        r"no hidden layer\), got 1",
    ),
    "grad params with a run axis": (
        lambda p: _grad(types.SimpleNamespace(params=p.runs, xs=p.xs, ys=p.ys), None, rule="bp"),
        ValueError,
        r"feedback_grad takes one network's params.*training\.many\(feedback\.feedback_grad, "
        r"per_run=\['params', 'feedback'\]\)",
    ),
    # The options: scale (sign, usf, brsf) and key (brsf).
    "grad scale zero for sign": (
        lambda p: _grad(p, None, rule="sign", scale=0),
        ValueError,
        r"Expected scale to be a finite number > 0, got 0.0",
    ),
    "grad scale NaN for usf": (
        lambda p: _grad(p, None, rule="usf", scale=np.nan),
        ValueError,
        r"Expected scale to be a finite number > 0, got nan",
    ),
    "grad scale negative for brsf": (
        lambda p: _grad(p, None, rule="brsf", scale=-0.5, key=KEY),
        ValueError,
        r"Expected scale to be a finite number > 0, got -0.5",
    ),
    "grad scale a str": (
        lambda p: _grad(p, None, rule="usf", scale="xavier"),
        TypeError,
        r"Expected scale to be a number > 0, got str 'xavier'",
    ),
    "grad scale an array": (
        lambda p: _grad(p, None, rule="sign", scale=jnp.ones(2)),
        TypeError,
        r"Expected scale to be a real scalar, got an array of float64 with shape \(2,\)",
    ),
    "grad scale for fa": (
        lambda p: _grad(p, p.fa, rule="fa", scale=0.5),
        ValueError,
        r"feedback_grad takes scale for rules \['sign', 'usf', 'brsf'\] only, got scale=0.5 "
        r"with rule 'fa': its matrices come from init_feedback\(key, params, 'fa', scale=",
    ),
    "grad scale for bp": (
        lambda p: _grad(p, None, rule="bp", scale=0.5),
        ValueError,
        r"feedback_grad takes scale for rules .* with rule 'bp': it has no scale",
    ),
    "grad brsf without a key": (
        lambda p: _grad(p, None, rule="brsf"),
        ValueError,
        r"feedback_grad with rule 'brsf' needs key=jax\.random\.key\(\.\.\.\)",
    ),
    "grad brsf with an int key": (
        lambda p: _grad(p, None, rule="brsf", key=3),
        TypeError,
        r"Expected key to be a jax.random key",
    ),
    "grad any rule with a bad key": (
        lambda p: _grad(p, None, rule="sign", key="key"),
        TypeError,
        r"Expected key to be a jax.random key",
    ),
    # alignment_angles and feedback_matrices: the same checks.
    "angles rule given positionally": (
        lambda p: feedback.alignment_angles(p.params, p.fa, p.xs, p.ys, "fa"),
        TypeError,
        r"alignment_angles takes 4 positional arguments.*by keyword \(rule=.*str 'fa'",
    ),
    "angles rule as the feedback": (
        lambda p: feedback.alignment_angles(p.params, "usf", p.xs, p.ys),
        TypeError,
        r"alignment_angles got the rule 'usf' as its feedback argument; pass rule='usf'",
    ),
    "angles brsf without a key": (
        lambda p: feedback.alignment_angles(p.params, None, p.xs, p.ys, rule="brsf"),
        ValueError,
        r"alignment_angles with rule 'brsf' needs key=",
    ),
    "angles int32 feedback": (
        lambda p: feedback.alignment_angles(
            p.params, _cast(p.fa, jnp.int32), p.xs, p.ys, rule="kp"
        ),
        TypeError,
        r"hidden layer 1 to have a real floating dtype.*int32",
    ),
    "angles params with a run axis": (
        lambda p: feedback.alignment_angles(p.runs, None, p.xs, p.ys, rule="sign"),
        ValueError,
        r"alignment_angles takes one network's params.*training\.many\(feedback\."
        r"alignment_angles",
    ),
    "matrices rule given positionally": (
        lambda p: feedback.feedback_matrices(p.params, None, "usf"),
        TypeError,
        r"feedback_matrices takes 2 positional arguments \(params, feedback\), got 3: "
        r"pass the others by keyword \(rule=, scale=, key=, net=\); the extra one is str 'usf'",
    ),
    "matrices brsf without a key": (
        lambda p: feedback.feedback_matrices(p.params, None, rule="brsf"),
        ValueError,
        r"feedback_matrices with rule 'brsf' needs key=",
    ),
    "matrices wrong dtype": (
        lambda p: feedback.feedback_matrices(p.params, _cast(p.frsf, jnp.float32), rule="frsf"),
        TypeError,
        r"hidden layer 1 to have the params' dtype float64, got float32",
    ),
    # RuleGradient in a training step.
    "gradient rule an int": (
        lambda p: _train(p, FeedbackParams(p.params, p.fa), RuleGradient(1)),
        TypeError,
        r"Expected rule to be a str.*got int 1",
    ),
    "gradient unknown rule": (
        lambda p: _train(p, FeedbackParams(p.params, p.fa), RuleGradient("sfa")),
        ValueError,
        r"Unknown rule 'sfa'",
    ),
    "gradient brsf without a key": (
        lambda p: _train(p, FeedbackParams(p.params, None), RuleGradient("brsf")),
        ValueError,
        r"RuleGradient\('brsf'\) with rule 'brsf' needs key=jax\.random\.key",
    ),
    "gradient scale for fa": (
        lambda p: _train(p, FeedbackParams(p.params, p.fa), RuleGradient("fa", scale=0.5)),
        ValueError,
        r"RuleGradient\('fa'\) takes scale for rules \['sign', 'usf', 'brsf'\] only",
    ),
    "gradient scale negative": (
        lambda p: _train(p, FeedbackParams(p.params, None), RuleGradient("usf", scale=-1.0)),
        ValueError,
        r"Expected scale to be a finite number > 0, got -1.0",
    ),
    "gradient weight_decay a str": (
        lambda p: _train(p, FeedbackParams(p.params, p.fa), RuleGradient("kp", "fa")),
        TypeError,
        r"Expected weight_decay to be a number >= 0, got str 'fa'",
    ),
    "gradient int32 feedback": (
        lambda p: _train(p, FeedbackParams(p.params, _cast(p.fa, jnp.int32)), RuleGradient("kp")),
        TypeError,
        r"hidden layer 1 to have a real floating dtype, the params' float64, got int32",
    ),
    "gradient matrices for usf": (
        lambda p: _train(p, FeedbackParams(p.params, p.fa), RuleGradient("usf")),
        ValueError,
        r"Rule 'usf' uses no feedback matrices",
    ),
    "gradient params not FeedbackParams": (
        lambda p: _train(p, p.params, RuleGradient("bp")),
        TypeError,
        r"params to be a feedback.FeedbackParams\(params, feedback\) for RuleGradient\('bp'\)",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_feedback_input_is_refused_by_name(name):
    call, error, message = CASES[name]
    with pytest.raises(error, match=message):
        call(_problem())
