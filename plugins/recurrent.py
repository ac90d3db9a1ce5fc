"""Recurrent layers: ``rnn`` (tanh or relu), ``lstm`` and ``gru`` over whole sequences,
the ``bidirectional`` wrapper and the ``time_distributed`` wrapper.

A sequence layer takes ``(batch, time, features)``. Its forward pass loops over time
with one GEMM per step, writing into preallocated buffers that become the cache: rnn
and gru project every step's input at once and add one recurrent GEMM per step; lstm's
one GEMM per step takes the step's input and previous state together,
``[x_t, 1, h_{t-1}]``, against the stacked weights and bias (see the lstm section).
Backward walks the steps in reverse (backpropagation through time) and forms the
weight gradients with one GEMM over all steps (lstm: over each chunk of about 1 MiB of
gate deltas, while it is in cache).

Parameters follow PyTorch's layout and gate order so weights can be exchanged:
``W_x`` (features, G*units), ``W_h`` (units, G*units), ``b_x`` and ``b_h`` (G*units),
with G = 1 (rnn), 4 (lstm: i, f, g, o) or 3 (gru: r, z, n; the reset gate multiplies
``h @ W_hn + b_hn`` as PyTorch does). PyTorch's ``weight_ih_l0`` is ``W_x.T``.

Extra inputs after the sequence, switched on by config so specs stay explicit:
``initial_state`` adds h0 (and c0 for lstm), each (batch, units); ``use_lengths``
adds the valid length of each sequence, (batch,) or (batch, 1) integers. Steps past
a sequence's length leave the state unchanged, output zeros and get no gradient,
exactly as PyTorch's packed sequences (a reversed layer starts at the last valid
step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from deltaprop import Layer, hookimpl
from deltaprop.config import choice, positive_int
from deltaprop.errors import ConfigError, DataError, ShapeError
from deltaprop.layer import call_backward, call_build

Shape = tuple[int, ...]
Grads = tuple[tuple[Any, ...], dict[str, np.ndarray]]

CELLS = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
STATES = {"rnn": 1, "lstm": 2, "gru": 1}


# --------------------------------------------------------------------------------------
# kernels: plain functions of arrays, shared by the layers and the bidirectional wrapper
# --------------------------------------------------------------------------------------

def _order(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _previous_states(Y: np.ndarray, h0: np.ndarray, mask: np.ndarray | None,
                     reverse: bool) -> np.ndarray:
    """(time, batch, units): the state each step started from, i.e. the previous step's
    output in processing order, or h0 where there is no previous valid step (the start,
    or a reversed sequence's padding). Padded steps get h0 too; their gate deltas are 0."""
    prev = np.empty_like(Y)
    if reverse:
        prev[:-1] = Y[1:]
        prev[-1] = h0
        if mask is not None:
            np.copyto(prev[:-1], h0[None], where=~mask[1:])
    else:
        prev[1:] = Y[:-1]
        prev[0] = h0
    return prev


def _gru_params(params: Sequence[np.ndarray], H: int) -> tuple[np.ndarray, ...]:
    """GRU weights as the forward loop uses them: the r and z columns negated, so that
    one exp gives both, sigmoid(a) = 1 / (1 + exp(-a)) (numpy's exp is much faster than
    its tanh)."""
    W_x, W_h, b_x, b_h = params
    scale = np.ones(W_h.shape[1], dtype=W_h.dtype)
    scale[:2 * H] = -1.0
    return W_x * scale, W_h * scale, b_x * scale, b_h * scale


def _zeros_state(state: np.ndarray | None, B: int, H: int, dtype: Any) -> np.ndarray:
    return np.zeros((B, H), dtype=dtype) if state is None else state


def _batch_major(a: np.ndarray, *, cached: bool = False) -> np.ndarray:
    """(time, batch, ...) as a (batch, time, ...) view: no copy, as PyTorch's batch_first
    (a copy would move the whole output sequence once more per call). A view of an
    array the cache keeps (``cached``) is read-only, so that writing into an output
    cannot change what backward reads."""
    view = a.transpose(1, 0, *range(2, a.ndim))
    if cached:
        view.flags.writeable = False
    return view


def sequence_forward(cell: str, x: np.ndarray, params: Sequence[np.ndarray],
                     states: Sequence[np.ndarray | None], mask: np.ndarray | None,
                     reverse: bool, activation: str, train: bool
                     ) -> tuple[np.ndarray, list[np.ndarray], Any]:
    """Run one direction of a cell over ``x`` (batch, time, features).

    Returns the output sequence (batch, time, units; zeros at padded steps; a view of a
    time-major buffer, see ``_batch_major``), the final states (h, and c for lstm) and
    the cache (None unless ``train``). ``mask`` is (batch, time) bool or None. Inside,
    arrays are time-major so that every step's slice is contiguous.
    """
    with np.errstate(over="ignore"):  # exp's overflow is harmless (see each cell)
        if cell == "lstm":
            return _lstm_forward(x, params, states, mask, reverse, train)
        if cell == "rnn":
            return _rnn_forward(x, params, states[0], mask, reverse, activation, train)
        return _gru_forward(x, params, states[0], mask, reverse, train)


def sequence_backward(cache: Any, params: Sequence[np.ndarray], dY: np.ndarray | None,
                      d_finals: Sequence[np.ndarray | None], need_dx: bool = True,
                      need_states: bool = True
                      ) -> tuple[np.ndarray | None, list[Any], list[np.ndarray]]:
    """Backpropagation through time for one direction.

    ``dY`` is the delta of the output sequence (batch, time, units) or None, ``d_finals``
    those of the final states. Returns (dx, [dh0, (dc0)], [dW_x, dW_h, db_x, db_h]);
    without ``need_states`` the initial states' deltas are None and the last step's
    recurrent GEMM, which only they need, is skipped.
    """
    cell = cache[0]
    if cell == "lstm":
        return _lstm_backward(cache, params, dY, d_finals, need_dx, need_states)
    if cell == "rnn":
        return _rnn_backward(cache, params, dY, d_finals[0], need_dx, need_states)
    return _gru_backward(cache, params, dY, d_finals[0], need_dx, need_states)


# --------------------------------------------------------------------------------------
# gru: h' = n + z (h - n), n = tanh(x_n + r (h W_hn + b_hn))
# --------------------------------------------------------------------------------------

def _gru_forward(x: np.ndarray, params: Sequence[np.ndarray], initial: np.ndarray | None,
                 mask: np.ndarray | None, reverse: bool, train: bool
                 ) -> tuple[np.ndarray, list[np.ndarray], Any]:
    """The input projection of every step at once, then one recurrent GEMM per step
    (as rnn; the reset gate multiplies the recurrent part alone)."""
    B, T, F = x.shape
    H = params[1].shape[0]
    dt = x.dtype
    h0 = _zeros_state(initial, B, H, dt)
    W_x, W_h, b_x, b_h = _gru_params(params, H)
    # the inputs get a column of ones, so the projection includes b_x (b_hn stays inside
    # the reset gate) and backward's one GEMM over it also yields the bias gradient
    xt = _sequence_input(x).reshape(T * B, F + 1)
    P = (xt @ np.vstack([W_x, b_x[None]])).reshape(T, B, -1)
    Y = np.empty((T, B, H), dtype=dt)
    mt = None if mask is None else _time_major_mask(mask)
    h = h0
    R = np.empty((T, B, H), dtype=dt)  # h @ W_hn + b_hn of each step, for the reset gate
    tmp = np.empty((B, 3 * H), dtype=dt)
    th = np.empty((B, H), dtype=dt)
    for k, t in enumerate(_order(T, reverse)):
        a = P[t]
        if k == 0 and initial is None:  # (a zero h0's product is zero)
            tmp[...] = b_h
        else:
            np.matmul(h, W_h, out=tmp)
            tmp += b_h
        rz = a[:, :2 * H]
        rz += tmp[:, :2 * H]
        np.exp(rz, out=rz)  # overflow to inf gives the limit 0
        rz += 1.0
        np.divide(1.0, rz, out=rz)  # (faster than np.reciprocal)
        R[t] = tmp[:, 2 * H:]
        n = a[:, 2 * H:]
        np.multiply(a[:, :H], tmp[:, 2 * H:], out=th)
        n += th
        np.tanh(n, out=n)
        yt = Y[t]
        np.subtract(h, n, out=th)
        th *= a[:, H:2 * H]
        np.add(n, th, out=yt)
        if mt is not None:
            h = np.where(mt[t], yt, h)
            yt *= mt[t]
        else:
            h = yt
    finals = [h.copy()]
    cache = ("gru", xt, P, R, Y, h0, mt, reverse) if train else None
    return _batch_major(Y, cached=train), finals, cache


def _gru_backward(cache: Any, params: Sequence[np.ndarray], dY: np.ndarray | None,
                  d_final: np.ndarray | None, need_dx: bool, need_states: bool
                  ) -> tuple[np.ndarray | None, list[Any], list[np.ndarray]]:
    _, xt, P, R, Y, h0, mt, reverse = cache
    W_x, W_h = params[0], params[1]
    T, B, _ = P.shape
    H = W_h.shape[0]
    F = xt.shape[1] - 1  # the last column is the ones of the bias
    dt = xt.dtype
    dYt = _time_major_delta(dY, mt, dt)
    dh = _delta_state(d_final, B, H, dt)
    pass_h = None
    W_hT = W_h.T
    Hprev = _previous_states(Y, h0, mt, reverse)
    r = P[:, :, :H]
    z = P[:, :, H:2 * H]
    n = P[:, :, 2 * H:]
    D = np.subtract(1.0, P)
    D *= P
    np.multiply(n, n, out=D[:, :, 2 * H:])
    np.subtract(1.0, D[:, :, 2 * H:], out=D[:, :, 2 * H:])
    one_minus_z = np.subtract(1.0, z)
    h_minus_n = np.subtract(Hprev, n)
    dGx = np.empty_like(P)   # deltas of the input-projection pre-activations
    dGh = np.empty_like(P)   # deltas of h @ W_h + b_h
    h0_step = T - 1 if reverse else 0  # the step that read h0
    for t in _order(T, not reverse):
        if dYt is not None:
            dh += dYt[t]
        if mt is not None:
            pass_h = dh * ~mt[t]
            dh *= mt[t]
        gx = dGx[t]
        gh = dGh[t]
        dn = gx[:, 2 * H:]
        np.multiply(dh, one_minus_z[t], out=dn)
        dn *= D[t, :, 2 * H:]                                        # d n_pre
        np.multiply(dh, h_minus_n[t], out=gx[:, H:2 * H])
        gx[:, H:2 * H] *= D[t, :, H:2 * H]                           # d z_pre
        np.multiply(dn, R[t], out=gx[:, :H])
        gx[:, :H] *= D[t, :, :H]                                     # d r_pre
        gh[:, :2 * H] = gx[:, :2 * H]
        np.multiply(dn, r[t], out=gh[:, 2 * H:])
        if t == h0_step and not need_states:
            break  # what is left is h0's delta
        dh *= z[t]
        dh += gh @ W_hT
        if pass_h is not None:
            dh += pass_h
    dGx2 = dGx.reshape(T * B, 3 * H)
    dGh2 = dGh.reshape(T * B, 3 * H)
    dWx_b = xt.T @ dGx2
    grads = [dWx_b[:F], Hprev.reshape(T * B, H).T @ dGh2, dWx_b[F], dGh2.sum(axis=0)]
    dx = _batch_major((dGx2 @ W_x.T).reshape(T, B, F)) if need_dx else None
    return dx, [dh if need_states else None], grads


# --------------------------------------------------------------------------------------
# rnn
# --------------------------------------------------------------------------------------

def _rnn_forward(x: np.ndarray, params: Sequence[np.ndarray], h0: np.ndarray | None,
                 mask: np.ndarray | None, reverse: bool, activation: str, train: bool
                 ) -> tuple[np.ndarray, list[np.ndarray], Any]:
    """Elman RNN, as the textbook writes it: the input projection of every step in one
    GEMM, then per step h_k = act(P_k + h_{k-1} W_h) computed in place in the states
    buffer S (steps, batch, units), whose slot 0 is h0.

    Everything is in processing order (k; a reversed layer's step k is time T-1-k), so
    S[:-1] are the states each step started from and S[1:] its outputs: both are
    contiguous, for the per-step GEMM, for the derivative in backward and for dW_h. The
    cache is the inputs with a column of ones (for dW_x and the bias gradient in one
    GEMM) and S."""
    W_x, W_h, b_x, b_h = params
    B, T, F = x.shape
    H = W_h.shape[0]
    dt = x.dtype
    relu = activation == "relu"
    xa = _sequence_input(x[:, ::-1] if reverse else x)
    Wb = np.empty((F + 1, H), dtype=dt)
    Wb[:F] = W_x
    np.add(b_x, b_h, out=Wb[F])
    S = np.empty((T + 1, B, H), dtype=dt)
    np.dot(xa.reshape(T * B, F + 1), Wb, out=S[1:].reshape(T * B, H))
    S[0] = _zeros_state(h0, B, H, dt)
    mk = None if mask is None else _time_major_mask(mask[:, ::-1] if reverse else mask)
    u = np.empty((B, H), dtype=dt)
    for k in range(T):
        h = S[k + 1]
        if k or h0 is not None:  # (a zero h0's product is zero)
            np.dot(S[k], W_h, out=u)
            h += u
        if relu:
            np.maximum(h, 0.0, out=h)
        else:
            np.tanh(h, out=h)
        if mk is not None:  # padded steps carry the state through
            np.copyto(h, S[k], where=~mk[k])
    Y = _batch_major(S[:0:-1] if reverse else S[1:], cached=train)
    if mask is not None:
        Y = Y * mask[:, :, None]
    cache = ("rnn", xa, S, mk, reverse, relu) if train else None
    return Y, [S[T].copy()], cache


def _rnn_backward(cache: Any, params: Sequence[np.ndarray], dY: np.ndarray | None,
                  d_final: np.ndarray | None, need_dx: bool, need_states: bool
                  ) -> tuple[np.ndarray | None, list[Any], list[np.ndarray]]:
    _, xa, S, mk, reverse, relu = cache
    W_x, W_h = params[0], params[1]
    T, B, F1 = xa.shape
    H = W_h.shape[0]
    dt = xa.dtype
    W_hT = np.ascontiguousarray(W_h.T, dtype=dt)  # (C order: faster GEMMs)
    dh = _delta_state(d_final, B, H, dt)
    dA = _time_major_delta(dY[:, ::-1] if reverse and dY is not None else dY, mk, dt)
    if dA is None:
        dA = np.zeros((T, B, H), dtype=dt)
    tmp = np.empty((B, H), dtype=dt)
    pass_h = None
    for k in range(T - 1, -1, -1):
        da = dA[k]
        if mk is not None:
            pass_h = dh * ~mk[k]
            dh *= mk[k]
        da += dh
        h = S[k + 1]
        if relu:
            np.sign(h, out=tmp)
        else:  # 1 - h^2
            np.multiply(h, h, out=tmp)
            np.subtract(1.0, tmp, out=tmp)
        da *= tmp
        if k == 0 and not need_states:
            break  # what is left is h0's delta
        np.dot(da, W_hT, out=dh)
        if pass_h is not None:
            dh += pass_h
    dA2 = dA.reshape(T * B, H)
    dWb = xa.reshape(T * B, F1).T @ dA2  # (features + 1, units): dW_x and the bias's
    db = dWb[F1 - 1]
    grads = [dWb[:F1 - 1], S[:T].reshape(T * B, H).T @ dA2, db, db.copy()]
    dx = None
    if need_dx:
        dxk = (dA2 @ W_x.T).reshape(T, B, F1 - 1)
        dx = _batch_major(dxk[::-1] if reverse else dxk)
    return dx, [dh if need_states else None], grads


# --------------------------------------------------------------------------------------
# lstm
# --------------------------------------------------------------------------------------
#
# Every step works on arrays whose gate blocks are contiguous (B, H) blocks: on a strided
# (B, H) slice of a (B, 4H) row numpy's element-wise loops run row by row over short
# runs instead of once over one block (docs/performance.md).
#
# - Z (time, batch, features + 1 + units) holds each step's [x_t, 1, h_{t-1}], so one
#   GEMM per step (Z[t] against the stacked weights, bias row included) gives all four
#   pre-activations at once, gate-major (4, B, H) in PyTorch's order (i, f, g, o),
#   without a separate input projection to add; backward's one GEMM over Z yields dW_x,
#   the bias gradient and dW_h together.
# - The weights are scaled so that one exp gives every gate: s = 1 / (1 + exp(z)) is
#   sigmoid(a) for z = -a and sigmoid(2a) for z = -2a, and tanh(a) = 2 sigmoid(2a) - 1.
# - With D = s (1 - s), the derivative of every gate is D up to a constant (4 for g),
#   which backward folds into its weights instead of spending an op per step on it.
# - Backward multiplies the deltas by per-gate factors K formed in the forward pass while
#   the gates are in cache: K_i = D_i g, K_f = D_f c_{t-1}, K_g = D_g i, K_o = D_o
#   tanh(c_t); i and g are each other's partners, so each pair is one op on a view.

#: the exp's argument is LSTM_SCALE[j] times gate j's pre-activation (i, f, g, o)
LSTM_SCALE = (-1.0, -1.0, -2.0, -1.0)
#: d pre-activation of gate j = LSTM_DELTA[j] * (delta times backward factor K_j)
LSTM_DELTA = (1.0, 1.0, 4.0, 1.0)


def _lstm_stacked_weights(params: Sequence[np.ndarray]) -> np.ndarray:
    """(4, F + 1 + H, H) view: per gate, [W_x; b_x + b_h; W_h] times its exp scale."""
    W_x, W_h, b_x, b_h = params
    H = W_h.shape[0]
    W = np.concatenate([W_x, (b_x + b_h)[None], W_h])
    W *= np.repeat(np.asarray(LSTM_SCALE, dtype=W.dtype), H)
    return W.reshape(W.shape[0], 4, H).transpose(1, 0, 2)


def _sequence_input(x: np.ndarray, room: int = 0) -> np.ndarray:
    """(time, batch, F + 1 + room): x time-major, a column of ones (for the bias), then
    ``room`` columns left for the caller (lstm: h_{t-1})."""
    B, T, F = x.shape
    Z = np.empty((T, B, F + 1 + room), dtype=x.dtype)
    Z[:, :, :F] = x.transpose(1, 0, 2)
    Z[:, :, F] = 1.0
    return Z


def _lstm_forward(x: np.ndarray, params: Sequence[np.ndarray],
                  states: Sequence[np.ndarray | None], mask: np.ndarray | None,
                  reverse: bool, train: bool) -> tuple[np.ndarray, list[np.ndarray], Any]:
    B, T, F = x.shape
    H = params[1].shape[0]
    dt = x.dtype
    W = _lstm_stacked_weights(params)
    Z = _sequence_input(x, H)
    order = list(_order(T, reverse))
    Z[order[0], :, F + 1:] = _zeros_state(states[0], B, H, dt)
    Yt = np.empty((T, B, H), dtype=dt)  # each step's h is written here first
    mt = None if mask is None else _time_major_mask(mask)
    # per step: the gates (i, f, g, o); pairs [c_{t-1}, tanh(c_t)] in two alternating
    # buffers (c_t is written into the other one's first block)
    a = np.empty((4, B, H), dtype=dt)
    pairs = np.empty((2, 2, B, H), dtype=dt)
    pairs[0, 0] = _zeros_state(states[1], B, H, dt)
    tmp = np.empty((B, H), dtype=dt)
    # the cache: per step the factors K of (i, f, g, o), then o (1 - tanh(c)^2) (carries
    # dh into dc) and f (carries dc to c_{t-1})
    K = np.empty((T if train else 0, 6, B, H), dtype=dt)
    i, f, g, o = a[0], a[1], a[2], a[3]
    h_prev = Z[order[0], :, F + 1:]
    cols = F + 1 if states[0] is None else F + 1 + H  # (a zero h0's product is zero)
    for k, t in enumerate(order):
        c_tc = pairs[k % 2]
        c_prev, tc = c_tc[0], c_tc[1]
        c_t = pairs[(k + 1) % 2, 0]
        np.matmul(Z[t, :, :cols], W[:, :cols], out=a)
        cols = F + 1 + H
        np.exp(a, out=a)  # overflow to inf gives the limits 0 and -1
        a += 1.0
        np.divide(1.0, a, out=a)  # (faster than np.reciprocal)
        if train:
            Kt = K[t]
            D = Kt[:4]
            np.subtract(1.0, a, out=D)
            D *= a
        g *= 2.0
        g -= 1.0
        np.multiply(f, c_prev, out=c_t)
        np.multiply(i, g, out=tmp)
        c_t += tmp
        np.tanh(c_t, out=tc)
        h = Yt[t]
        np.multiply(o, tc, out=h)
        if train:
            D[0::2] *= a[2::-2]     # K_i = D_i g, K_g = D_g i
            D[1::2] *= c_tc         # K_f = D_f c_{t-1}, K_o = D_o tanh(c_t)
            np.multiply(h, tc, out=Kt[4])
            np.subtract(o, Kt[4], out=Kt[4])
            Kt[5] = f
        if mt is not None:
            m = mt[t]
            np.copyto(c_t, c_prev, where=~m)
            state = np.where(m, h, h_prev)
            h *= m
        else:
            state = h
        if k + 1 < T:
            h_prev = Z[order[k + 1], :, F + 1:]
            h_prev[...] = state
        else:
            h_prev = state
    finals = [np.array(h_prev, copy=True), pairs[T % 2, 0].copy()]
    cache = ("lstm", Z, K, mt, reverse) if train else None
    return _batch_major(Yt), finals, cache


def _lstm_backward(cache: Any, params: Sequence[np.ndarray], dY: np.ndarray | None,
                   d_finals: Sequence[np.ndarray | None], need_dx: bool, need_states: bool
                   ) -> tuple[np.ndarray | None, list[Any], list[np.ndarray]]:
    _, Z, K, mt, reverse = cache
    W_x, W_h = params[0], params[1]
    T, B, FH = Z.shape
    H = W_h.shape[0]
    F = FH - 1 - H
    dt = Z.dtype
    # dA holds the pre-activation deltas (i, f, g, o), those of g over 4 (LSTM_DELTA):
    # the weights take the 4 instead. It holds a chunk of steps at a time: once a chunk is
    # done, its share of dW and dx is one GEMM each, while it is still in cache (rather
    # than one GEMM over all steps at the end, which rereads it from memory), and the
    # buffer stops growing with T
    delta = np.repeat(np.asarray(LSTM_DELTA, dtype=dt), H)
    dh = _delta_state(d_finals[0], B, H, dt)
    dc = _delta_state(d_finals[1], B, H, dt)
    chunk = _chunk_steps(T, B, 4 * H * dt.itemsize)
    dA = np.empty((chunk, B, 4 * H), dtype=dt)
    dW = np.empty(0, dtype=dt)  # the first chunk's product
    dx_t = np.empty((T, B, F), dtype=dt) if need_dx else None
    dYt = _time_major_delta(dY, mt, dt)
    W_hT = (W_h * delta).astype(dt, copy=False).T
    W_xT = (W_x * delta).astype(dt, copy=False).T
    tmp = np.empty((B, H), dtype=dt)
    dG = np.empty((4, B, H), dtype=dt)  # one step's gate deltas, gate-major
    pass_h = pass_c = None
    h0_step = T - 1 if reverse else 0  # the step that read h0 and c0
    order = _order(T, not reverse)
    for first in range(0, T, chunk):
        steps = order[first:first + chunk]
        lo = min(steps[0], steps[-1])  # the chunk's rows of dA are in time order
        for t in steps:
            if dYt is not None:
                dh += dYt[t]
            if mt is not None:
                pass_h = dh * ~mt[t]
                pass_c = dc * ~mt[t]
                dh *= mt[t]
                dc *= mt[t]
            Kt = K[t]
            np.multiply(dh, Kt[4], out=tmp)
            dc += tmp                                                  # d c_t
            # into contiguous blocks, then one copy into dA's (B, 4H) row: faster than
            # two products into strided views of that row
            np.multiply(Kt[:3], dc, out=dG[:3])                        # i, f, g
            np.multiply(dh, Kt[3], out=dG[3])                          # o
            dA[t - lo].reshape(B, 4, H)[...] = dG.transpose(1, 0, 2)
            if t == h0_step and not need_states:
                break  # what is left is the deltas of h0 and c0
            dc *= Kt[5]                                                # d c_{t-1}
            np.dot(dA[t - lo], W_hT, out=dh)                           # d h_{t-1}
            if pass_h is not None:
                dh += pass_h
                dc += pass_c
        n = len(steps)
        block = dA[:n].reshape(n * B, 4 * H)
        part = Z[lo:lo + n].reshape(n * B, FH).T @ block
        if first:
            dW += part
        else:
            dW = part
        if dx_t is not None:
            np.dot(block, W_xT, out=dx_t[lo:lo + n].reshape(n * B, F))
    dW *= delta
    grads = [dW[:F], dW[F + 1:], dW[F], dW[F].copy()]
    dx = None if dx_t is None else _batch_major(dx_t)
    return dx, ([dh, dc] if need_states else [None, None]), grads


def _chunk_steps(T: int, B: int, step_bytes: int) -> int:
    """Steps per chunk of a backward pass's deltas: about 1 MiB of them, but at least
    256 rows (batch times steps), so that the chunk's GEMMs stay efficient."""
    return max(1, min(T, max(-(-256 // B), (1 << 20) // (B * step_bytes))))


def _time_major_delta(dY: np.ndarray | None, mt: np.ndarray | None, dt: Any
                      ) -> np.ndarray | None:
    """The output sequence's delta (batch, time, units) as (time, batch, units), so that
    each step's slice is contiguous; padded steps' outputs are constant zeros, so their
    deltas are dropped."""
    if dY is None:
        return None
    out = np.empty((dY.shape[1], dY.shape[0], dY.shape[2]), dtype=dt)
    if mt is None:
        np.copyto(out, dY.transpose(1, 0, 2))
    else:
        np.multiply(dY.transpose(1, 0, 2), mt, out=out)
    return out


def _time_major_mask(mask: np.ndarray) -> np.ndarray:
    """(batch, time) bool to (time, batch, 1), so that each step's mask is contiguous and
    broadcasts over the units."""
    return np.ascontiguousarray(mask.T)[:, :, None]


def _delta_state(d: np.ndarray | None, B: int, H: int, dt: Any) -> np.ndarray:
    """A running state delta, starting from the final state's delta (or zeros)."""
    return np.zeros((B, H), dtype=dt) if d is None else d.astype(dt, copy=True)


# --------------------------------------------------------------------------------------
# input checks shared by the layers
# --------------------------------------------------------------------------------------

def lengths_mask(lengths: np.ndarray, batch: int, T: int, owner: str) -> np.ndarray:
    """(batch, time) bool mask of valid steps, from integer lengths; clear errors else."""
    lengths = np.asarray(lengths)
    if lengths.ndim == 2 and lengths.shape[1] == 1:
        lengths = lengths[:, 0]
    if lengths.shape != (batch,):
        raise ShapeError(f"{owner}: lengths must have shape (batch,) or (batch, 1) with "
                         f"batch {batch}, got {lengths.shape}")
    if not np.issubdtype(lengths.dtype, np.integer):
        if not np.issubdtype(lengths.dtype, np.floating) or not np.all(
                lengths == np.round(lengths)):
            raise DataError(f"{owner}: lengths must be whole numbers, got {lengths.dtype} "
                            f"values such as {lengths.ravel()[:3].tolist()}")
        lengths = lengths.astype(np.int64)
    if lengths.size and (lengths.min() < 0 or lengths.max() > T):
        bad = int(lengths[(lengths < 0) | (lengths > T)][0])
        raise DataError(f"{owner}: a length of {bad} does not fit the time axis of "
                        f"{T} steps (lengths must lie in 0..{T})")
    return np.arange(T)[None, :] < lengths[:, None]


def _check_sequence(x: np.ndarray, F: int, owner: str) -> None:
    if x.ndim != 3 or x.shape[2] != F:
        raise ShapeError(f"{owner}: expects sequences of shape (batch, time, {F}), got "
                         f"{x.shape}")


def _check_state(s: np.ndarray, B: int, H: int, owner: str, what: str) -> np.ndarray:
    if s.shape != (B, H):
        raise ShapeError(f"{owner}: initial state {what} must have shape (batch, units) = "
                         f"({B}, {H}), got {s.shape}")
    return s


def _check_build_inputs(owner: str, input_shapes: Sequence[Shape], n_states: int,
                        units: int, initial_state: bool, use_lengths: bool) -> Shape:
    expected = 1 + (n_states if initial_state else 0) + (1 if use_lengths else 0)
    if len(input_shapes) != expected:
        what = ["the sequence"]
        if initial_state:
            what.append(f"{n_states} initial state(s)")
        if use_lengths:
            what.append("lengths")
        raise ShapeError(f"{owner} takes {expected} input(s) ({', '.join(what)}), got "
                         f"{len(input_shapes)}")
    seq = tuple(input_shapes[0])
    if len(seq) != 2:
        raise ShapeError(f"{owner} expects sequences of shape (batch, time, features), got "
                         f"(batch, {', '.join(map(str, seq))})")
    k = 1
    if initial_state:
        for i in range(n_states):
            if tuple(input_shapes[k]) != (units,):
                raise ShapeError(f"{owner}: initial state {i} must have shape (batch, "
                                 f"{units}), got (batch, "
                                 f"{', '.join(map(str, input_shapes[k]))})")
            k += 1
    if use_lengths and tuple(input_shapes[k]) not in ((), (1,)):
        raise ShapeError(f"{owner}: lengths must have shape (batch,) or (batch, 1), got "
                         f"(batch, {', '.join(map(str, input_shapes[k]))})")
    return seq


def _sample_sequence_inputs(rng: np.random.Generator, input_shapes: Sequence[Shape],
                            batch: int, dtype: str) -> list[np.ndarray]:
    """Sequences and states from a normal; an input of shape () or (1,) after the first
    is the lengths input (examples keep units > 1): lengths in 1..time, one of them
    short so that padding is exercised."""
    T = input_shapes[0][0]
    out = []
    for i, shape in enumerate(input_shapes):
        if i > 0 and tuple(shape) in ((), (1,)):
            lengths = rng.integers(1, T + 1, size=batch)
            lengths[0] = max(1, T - 2)
            lengths[-1] = T
            out.append(lengths.reshape(batch, *shape))
        else:
            out.append((0.7 * rng.standard_normal((batch, *shape))).astype(dtype))
    return out


# --------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------

def _add_contiguous(layer: Layer, name: str, shape: Shape, init: str, rng: Any,
                    fan_in: int, fan_out: int) -> None:
    """add_param, made C-contiguous: the orthogonal initializer can return a transposed
    (Fortran-ordered) array, and in-place updates must reach the stored values."""
    layer.add_param(name, shape, init, rng, fan_in=fan_in, fan_out=fan_out)
    layer.params[name] = np.ascontiguousarray(layer.params[name])


class Recurrent(Layer):
    """Base of ``rnn``, ``lstm`` and ``gru``; subclasses set ``cell``.

    Config:
        units: size of the hidden state (and of each output step).
        return_sequences: output every step (batch, T, units), not only the last (batch,
            units).
        return_state: also output the final states (h, and c for lstm).
        reverse: read the sequence from its last step to its first.
        initial_state: take the initial states as extra inputs (else zeros).
        use_lengths: take each sequence's length as a last input; steps past it are
            ignored.
        kernel_initializer: initializer of the input weights ``W_x``.
        recurrent_initializer: initializer of the recurrent weights ``W_h``.
        bias_initializer: initializer of ``b_x`` and ``b_h``.
    """

    cell: ClassVar[str] = ""
    n_inputs = None

    def cache_allowance(self) -> tuple[float, str] | None:
        return (4.0, "backpropagation through time reads the gates and states of every step")

    def __init__(self, units: int, *, return_sequences: bool = False,
                 return_state: bool = False, reverse: bool = False,
                 initial_state: bool = False, use_lengths: bool = False,
                 kernel_initializer: str = "glorot_uniform",
                 recurrent_initializer: str = "orthogonal", bias_initializer: str = "zeros",
                 dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.units = positive_int(self.name, "units", units)
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.reverse = bool(reverse)
        self.initial_state = bool(initial_state)
        self.use_lengths = bool(use_lengths)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer

    @property
    def activation_name(self) -> str:
        return "tanh"

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape, ...]:
        n_states = STATES[self.cell]
        T, F = _check_build_inputs(self.name, input_shapes, n_states, self.units,
                                   self.initial_state, self.use_lengths)
        G = GATES[self.cell] * self.units
        H = self.units
        self.add_param("W_x", (F, G), self.kernel_initializer, rng, fan_in=F, fan_out=G)
        _add_contiguous(self, "W_h", (H, G), self.recurrent_initializer, rng, H, G)
        self.add_param("b_x", (G,), self.bias_initializer, rng, fan_in=F, fan_out=G)
        self.add_param("b_h", (G,), self.bias_initializer, rng, fan_in=H, fan_out=G)
        first = (T, H) if self.return_sequences else (H,)
        return (first, *([(H,)] * n_states if self.return_state else []))

    def _params(self) -> tuple[np.ndarray, ...]:
        p = self.params
        return p["W_x"], p["W_h"], p["b_x"], p["b_h"]

    def _split_inputs(self, inputs: Sequence[np.ndarray]
                      ) -> tuple[np.ndarray, list[np.ndarray | None], np.ndarray | None]:
        x = inputs[0]
        F = self.params["W_x"].shape[0]
        _check_sequence(x, F, self.name)
        B, T = x.shape[:2]
        n_states = STATES[self.cell]
        states: list[np.ndarray | None] = [None] * n_states
        k = 1
        if self.initial_state:
            for i in range(n_states):
                states[i] = _check_state(inputs[k], B, self.units, self.name,
                                         "h" if i == 0 else "c")
                k += 1
        mask = lengths_mask(inputs[k], B, T, self.name) if self.use_lengths else None
        return x, states, mask

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        outputs, cache, _ = self.forward_with_state(inputs, train=train, state=None)
        return outputs, cache

    def carries_state(self) -> bool:
        """Without initial-state inputs, the state can run on from call to call."""
        return not self.initial_state

    def forward_with_state(self, inputs: tuple[np.ndarray, ...], *, train: bool,
                           state: Any) -> tuple[Any, Any, Any]:
        x, states, mask = self._split_inputs(inputs)
        if state is not None:
            states = list(state)
        Y, finals, cache = sequence_forward(self.cell, x, self._params(), states, mask,
                                            self.reverse, self.activation_name, train)
        first = Y if self.return_sequences else finals[0].copy()
        outputs = (first, *finals) if self.return_state else (first,)
        return outputs, cache, finals

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        dY, d_finals = _split_output_grads(grad_outputs, self.return_sequences,
                                           self.return_state, STATES[self.cell])
        need_dx = needs_grad is None or needs_grad[0]
        need_states = _state_deltas_wanted(self.initial_state, needs_grad, STATES[self.cell])
        dx, d_states, grads = sequence_backward(cache, self._params(), dY, d_finals, need_dx,
                                                need_states)
        grad_inputs: list[Any] = [dx]
        if self.initial_state:
            grad_inputs.extend(d_states)
        if self.use_lengths:
            grad_inputs.append(None)
        return tuple(grad_inputs), dict(zip(("W_x", "W_h", "b_x", "b_h"), grads, strict=True))

    @classmethod
    def sample_inputs(cls, rng: np.random.Generator, input_shapes: Sequence[Shape],
                      batch: int, dtype: str) -> list[np.ndarray]:
        return _sample_sequence_inputs(rng, input_shapes, batch, dtype)


def _state_deltas_wanted(initial_state: bool, needs_grad: Sequence[bool] | None,
                         n_states: int) -> bool:
    """Whether backward must go on to the initial states' deltas: only initial-state
    inputs (after the sequence, ``n_states`` of them) take them, and only when the
    executor keeps them."""
    return initial_state and (needs_grad is None or any(needs_grad[1:1 + n_states]))


def _split_output_grads(grad_outputs: Sequence[np.ndarray], return_sequences: bool,
                        return_state: bool, n_states: int
                        ) -> tuple[np.ndarray | None, list[np.ndarray | None]]:
    """The delta of the output sequence and those of the final states; a last-step output
    is the final h, so its delta joins the final h's."""
    d_finals: list[np.ndarray | None] = [None] * n_states
    if return_state:
        d_finals = list(grad_outputs[1:1 + n_states])
    if return_sequences:
        return grad_outputs[0], d_finals
    first = grad_outputs[0]
    d_finals[0] = first if d_finals[0] is None else first + d_finals[0]
    return None, d_finals


def _shapes_note(layer: Layer, input_shapes: Sequence[Shape]) -> str:
    """The weight and input shapes a recurrent rule refers to."""
    p = layer.params
    return f"W_x {p['W_x'].shape}, W_h {p['W_h'].shape}, x {tuple(input_shapes[0])}"


class RNN(Recurrent):
    """Elman RNN: h_t = act(x_t W_x + b_x + h_{t-1} W_h + b_h), act tanh or relu.

    Config:
        activation: "tanh" or "relu".
    """

    name = "rnn"
    cell = "rnn"
    examples = [
        {"config": {"units": 3, "return_sequences": True}, "input_shapes": [(4, 2)]},
        {"config": {"units": 3, "activation": "relu", "reverse": True,
                    "return_state": True, "recurrent_initializer": "glorot_uniform"},
         "input_shapes": [(3, 2)]},
        {"config": {"units": 2, "return_sequences": True, "initial_state": True,
                    "use_lengths": True, "return_state": True},
         "input_shapes": [(4, 3), (2,), ()]},
    ]

    def __init__(self, units: int, *, activation: str = "tanh",
                 return_sequences: bool = False, return_state: bool = False,
                 reverse: bool = False, initial_state: bool = False,
                 use_lengths: bool = False, kernel_initializer: str = "glorot_uniform",
                 recurrent_initializer: str = "orthogonal", bias_initializer: str = "zeros",
                 dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(units, return_sequences=return_sequences, return_state=return_state,
                         reverse=reverse, initial_state=initial_state,
                         use_lengths=use_lengths, kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer,
                         bias_initializer=bias_initializer, dtype=dtype, label=label)
        self.activation = choice("rnn", "activation", activation, ("tanh", "relu"))

    @property
    def activation_name(self) -> str:
        return self.activation

    def describe_backward(self, input_shapes: Sequence[Shape]) -> str:
        act = "1 - h_t²" if self.activation == "tanh" else "[h_t > 0]"
        return ("backpropagation through time, from the last step: δh_t = Δ'_t + δa_{t+1} "
                f"· W_hᵀ, δa_t = δh_t ⊙ ({act}); Δx_t = δa_t · W_xᵀ, ∂L/∂W_x = Σ_t x_tᵀ · "
                "δa_t, ∂L/∂W_h = Σ_t h_{t-1}ᵀ · δa_t; "
                + _shapes_note(self, input_shapes))


class LSTM(Recurrent):
    """Long short-term memory: gates i, f, g, o; c_t = f c_{t-1} + i g, h_t = o tanh(c_t)."""

    name = "lstm"
    cell = "lstm"
    examples = [
        {"config": {"units": 3, "return_sequences": True}, "input_shapes": [(4, 2)]},
        {"config": {"units": 2, "return_state": True, "reverse": True}, "input_shapes": [(3, 3)]},
        {"config": {"units": 2, "return_sequences": True, "return_state": True,
                    "initial_state": True, "use_lengths": True, "reverse": True},
         "input_shapes": [(4, 2), (2,), (2,), (1,)]},
    ]

    def describe_backward(self, input_shapes: Sequence[Shape]) -> str:
        return ("backpropagation through time, from the last step: δc_t = δh_t ⊙ o_t ⊙ "
                "(1 - tanh²c_t) + δc_{t+1} ⊙ f_{t+1}; gate deltas δi = δc_t ⊙ g ⊙ i(1-i), "
                "δf = δc_t ⊙ c_{t-1} ⊙ f(1-f), δg = δc_t ⊙ i ⊙ (1-g²), δo = δh_t ⊙ tanh c_t "
                "⊙ o(1-o) make δa_t; Δx_t = δa_t · W_xᵀ, δh_{t-1} += δa_t · W_hᵀ, ∂L/∂W_x = "
                "Σ_t x_tᵀ · δa_t, ∂L/∂W_h = Σ_t h_{t-1}ᵀ · δa_t; "
                + _shapes_note(self, input_shapes))


class GRU(Recurrent):
    """Gated recurrent unit, PyTorch's formulation: n = tanh(x W_xn + b_xn +
    r (h W_hn + b_hn)), h_t = (1 - z) n + z h_{t-1}."""

    name = "gru"
    cell = "gru"
    examples = [
        {"config": {"units": 3, "return_sequences": True}, "input_shapes": [(4, 2)]},
        {"config": {"units": 2, "return_state": True, "initial_state": True,
                    "use_lengths": True, "reverse": True},
         "input_shapes": [(4, 3), (2,), ()]},
    ]

    def describe_backward(self, input_shapes: Sequence[Shape]) -> str:
        return ("backpropagation through time, from the last step: δn = δh_t ⊙ (1 - z) ⊙ "
                "(1 - n²), δz = δh_t ⊙ (h_{t-1} - n) ⊙ z(1-z), δr = δn ⊙ (h_{t-1} W_hn + "
                "b_hn) ⊙ r(1-r); δh_{t-1} = δh_t ⊙ z + δa_t · W_hᵀ (n's part through r); "
                "Δx_t = δa_t · W_xᵀ, ∂L/∂W_x = Σ_t x_tᵀ · δa_t; "
                + _shapes_note(self, input_shapes))


class Bidirectional(Layer):
    """Runs a cell forward and backward over the sequence and concatenates the two
    outputs along features. Configured flat, so it reads naturally in a spec file:
    ``layer = "bidirectional"``, ``cell = "lstm"``, ``units = 32``...

    Inputs: the sequence; with ``initial_state`` the forward states then the backward
    states (h, and c for lstm); with ``use_lengths`` the lengths. Outputs: the
    concatenated sequence (or final outputs: the forward direction's last step and the
    backward direction's first); with ``return_state`` then the forward final states and
    the backward final states. Parameters are ``forward_W_x`` ... ``backward_b_h``.

    Config:
        cell: "rnn", "lstm" or "gru", run in both directions.
        units: size of each direction's hidden state (outputs have 2 * units features).
        activation: "tanh" or "relu" (cell "rnn" only).
        return_sequences: output every step, not only the final outputs.
        return_state: also output both directions' final states.
        initial_state: take both directions' initial states as extra inputs.
        use_lengths: take each sequence's length as a last input.
        kernel_initializer: initializer of the input weights.
        recurrent_initializer: initializer of the recurrent weights.
        bias_initializer: initializer of the biases.
    """

    name = "bidirectional"
    n_inputs = None
    examples = [
        {"config": {"cell": "lstm", "units": 2, "return_sequences": True},
         "input_shapes": [(3, 2)]},
        {"config": {"cell": "gru", "units": 2, "return_state": True, "use_lengths": True},
         "input_shapes": [(4, 2), ()]},
        {"config": {"cell": "rnn", "units": 2, "return_sequences": True,
                    "initial_state": True}, "input_shapes": [(3, 2), (2,), (2,)]},
    ]

    def cache_allowance(self) -> tuple[float, str] | None:
        return (4.0, "backpropagation through time reads the gates and states of every step")

    def __init__(self, cell: str, units: int, *, activation: str = "tanh",
                 return_sequences: bool = False, return_state: bool = False,
                 initial_state: bool = False, use_lengths: bool = False,
                 kernel_initializer: str = "glorot_uniform",
                 recurrent_initializer: str = "orthogonal", bias_initializer: str = "zeros",
                 dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.cell = choice("bidirectional", "cell", cell, CELLS)
        self.units = positive_int("bidirectional", "units", units)
        self.activation = choice("bidirectional", "activation", activation, ("tanh", "relu"))
        if self.cell != "rnn" and activation != "tanh":
            raise ConfigError(f"bidirectional: activation applies to cell 'rnn' only, "
                              f"not {self.cell!r}")
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.initial_state = bool(initial_state)
        self.use_lengths = bool(use_lengths)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape, ...]:
        n = STATES[self.cell]
        # the states of both directions come as 2n state inputs
        T, F = _check_build_inputs("bidirectional", input_shapes, 2 * n, self.units,
                                   self.initial_state, self.use_lengths)
        G = GATES[self.cell] * self.units
        H = self.units
        for d in ("forward", "backward"):
            self.add_param(f"{d}_W_x", (F, G), self.kernel_initializer, rng, fan_in=F,
                           fan_out=G)
            _add_contiguous(self, f"{d}_W_h", (H, G), self.recurrent_initializer, rng, H, G)
            self.add_param(f"{d}_b_x", (G,), self.bias_initializer, rng, fan_in=F, fan_out=G)
            self.add_param(f"{d}_b_h", (G,), self.bias_initializer, rng, fan_in=H, fan_out=G)
        first = (T, 2 * H) if self.return_sequences else (2 * H,)
        return (first, *([(H,)] * (2 * n) if self.return_state else []))

    def _params(self, d: str) -> tuple[np.ndarray, ...]:
        p = self.params
        return p[f"{d}_W_x"], p[f"{d}_W_h"], p[f"{d}_b_x"], p[f"{d}_b_h"]

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        x = inputs[0]
        F = self.params["forward_W_x"].shape[0]
        _check_sequence(x, F, self.name)
        B, T = x.shape[:2]
        n = STATES[self.cell]
        fw_states: list[Any] = [None] * n
        bw_states: list[Any] = [None] * n
        if self.initial_state:
            fw_states = [_check_state(s, B, self.units, self.name, f"{i} (forward)")
                         for i, s in enumerate(inputs[1:1 + n])]
            bw_states = [_check_state(s, B, self.units, self.name, f"{i} (backward)")
                         for i, s in enumerate(inputs[1 + n:1 + 2 * n])]
        mask = lengths_mask(inputs[-1], B, T, self.name) if self.use_lengths else None
        Yf, ff, cf = sequence_forward(self.cell, x, self._params("forward"), fw_states, mask,
                                      False, self.activation, train)
        Yb, fb, cb = sequence_forward(self.cell, x, self._params("backward"), bw_states,
                                      mask, True, self.activation, train)
        if self.return_sequences:
            first = np.concatenate([Yf, Yb], axis=-1)
        else:
            first = np.concatenate([ff[0], fb[0]], axis=-1)
        outputs = (first, *ff, *fb) if self.return_state else (first,)
        return outputs, ((cf, cb) if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        cf, cb = cache
        n = STATES[self.cell]
        H = self.units
        g0 = grad_outputs[0]
        d_ff: list[Any] = [None] * n
        d_fb: list[Any] = [None] * n
        if self.return_state:
            d_ff = list(grad_outputs[1:1 + n])
            d_fb = list(grad_outputs[1 + n:1 + 2 * n])
        dYf: np.ndarray | None = None
        dYb: np.ndarray | None = None
        if self.return_sequences:
            dYf, dYb = g0[..., :H], g0[..., H:]
        else:
            d_ff[0] = g0[:, :H] if d_ff[0] is None else g0[:, :H] + d_ff[0]
            d_fb[0] = g0[:, H:] if d_fb[0] is None else g0[:, H:] + d_fb[0]
        need_dx = needs_grad is None or needs_grad[0]
        need_states = _state_deltas_wanted(self.initial_state, needs_grad, 2 * n)
        dxf, dsf, gf = sequence_backward(cf, self._params("forward"), dYf, d_ff, need_dx,
                                         need_states)
        dxb, dsb, gb = sequence_backward(cb, self._params("backward"), dYb, d_fb, need_dx,
                                         need_states)
        dx = None
        if dxf is not None and dxb is not None:
            dx = dxf
            dx += dxb
        grad_inputs: list[Any] = [dx]
        if self.initial_state:
            grad_inputs.extend([*dsf, *dsb])
        if self.use_lengths:
            grad_inputs.append(None)
        names = ("W_x", "W_h", "b_x", "b_h")
        grads = {f"forward_{k}": v for k, v in zip(names, gf, strict=True)}
        grads.update({f"backward_{k}": v for k, v in zip(names, gb, strict=True)})
        return tuple(grad_inputs), grads

    @classmethod
    def sample_inputs(cls, rng: np.random.Generator, input_shapes: Sequence[Shape],
                      batch: int, dtype: str) -> list[np.ndarray]:
        return _sample_sequence_inputs(rng, input_shapes, batch, dtype)


class TimeDistributed(Layer):
    """Applies any registered layer to every step of a sequence, as a batch of
    batch*time samples: ``wrap = "dense"`` and its ``config`` (a table). The wrapped
    layer's parameters are this layer's parameters.

    (``dense`` already maps over leading axes; this wrapper makes any layer do so, e.g.
    an ``lstm`` over each of several sequences.)

    Config:
        wrap: the registry name of the layer applied to every step.
        config: the wrapped layer's config (a table).
    """

    name = "time_distributed"
    examples = [
        {"config": {"wrap": "dense", "config": {"units": 3}}, "input_shapes": [(4, 2)]},
        {"config": {"wrap": "tanh"}, "input_shapes": [(3, 2, 2)]},
        {"config": {"wrap": "gru", "config": {"units": 2}}, "input_shapes": [(2, 3, 2)]},
    ]

    def __init__(self, wrap: str, config: dict[str, Any] | None = None, *,
                 dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        from deltaprop.registry import get_registry

        if not isinstance(wrap, str):
            raise ConfigError(f"time_distributed: wrap must be a layer name, got {wrap!r}")
        config = dict(config or {})
        if "dtype" in config and config["dtype"] != dtype:
            raise ConfigError("time_distributed: the wrapped layer takes this layer's dtype; "
                              "leave dtype out of config")
        config.pop("dtype", None)
        self.wrap = wrap
        self.config = config
        try:
            self.inner = get_registry().create(wrap, dtype=dtype, **config)
        except Exception as exc:
            raise ConfigError(f"time_distributed: cannot create the wrapped layer {wrap!r}: "
                              f"{exc}") from None
        self.params = self.inner.params  # one dict: loading or updating one updates both

    def cache_allowance(self) -> tuple[float, str] | None:
        return self.inner.cache_allowance()

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape, ...]:
        self.expect_inputs(input_shapes)
        shape = tuple(input_shapes[0])
        if len(shape) < 1:
            raise ShapeError("time_distributed needs inputs with a time axis, got (batch,)")
        T, step = shape[0], shape[1:]
        try:
            out = call_build(self.inner, (step,), rng)
        except ShapeError as exc:
            raise ShapeError(f"time_distributed({self.wrap}) at each step: {exc}") from None
        self.inner.input_shapes = (step,)
        self.inner.output_shapes = tuple(tuple(s) for s in out)
        return tuple((T, *s) for s in out)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (x,) = inputs
        B, T = x.shape[:2]
        outs, cache = self.inner.forward((x.reshape(B * T, *x.shape[2:]),), train=train)
        outs = tuple(o.reshape(B, T, *o.shape[1:]) for o in outs)
        return outs, ((cache, B, T) if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        inner_cache, B, T = cache
        grads = tuple(g.reshape(B * T, *g.shape[2:]) for g in grad_outputs)
        (dx,), dparams = call_backward(self.inner, inner_cache, grads, needs_grad)
        return (None if dx is None else dx.reshape(B, T, *dx.shape[1:]),), dparams


@hookimpl
def deltaprop_register_layers() -> list[type[Layer]]:
    return [RNN, LSTM, GRU, Bidirectional, TimeDistributed]
