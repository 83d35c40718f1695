"""BROKEN EXAMPLE: the GRU of the seed question, ported from the Theano LSTM tutorial.

Written for the tutorial's ``lstm.py``: it relies on the tutorial's globals
(``theano``, ``tensor``, ``_p``, ``ortho_weight``, ``numpy_floatX``), which
``gradcheck`` provides when it loads this file.  The equations (update
convention "new": the update gate weights the new candidate)::

    r = sigma(x W_r + h U_r + b_r)          u = sigma(x W_u + h U_u + b_u)
    n = tanh(x W_h + b_h + (r * h) U_h)     h' = (1 - u) * h + u * n
    h_t = m_t h' + (1 - m_t) h_{t-1}

The bug: ``scan`` with ONE output returns the output tensor itself, not a
list, so ``rval[0]`` is the state after the first step, shape (B, H), instead
of every state, (T, B, H).  The tutorial's mean pooling then broadcasts that
one state over time and the classifier sees only the first word of each
review.  Gradients are self-consistent, so no gradient check can see it:
``gradcheck compare`` does.  ``gru_layer_fixed`` returns ``rval``.
"""

import numpy as np


def param_init_gru(options, params, prefix="gru"):
    dim = options["dim_proj"]
    # blocks r | u | h along axis 1, for the input (W) and for the state (U)
    params[_p(prefix, "W")] = np.concatenate([ortho_weight(dim) for _ in range(3)], axis=1)
    params[_p(prefix, "U")] = np.concatenate([ortho_weight(dim) for _ in range(3)], axis=1)
    params[_p(prefix, "b")] = np.zeros((3 * dim,)).astype(config.floatX)
    return params


def _gru_states(tparams, state_below, options, prefix, mask):
    nsteps = state_below.shape[0]
    n_samples = state_below.shape[1]
    dim = options["dim_proj"]

    def block(x, k):
        return x[:, k * dim:(k + 1) * dim]

    def step(m_, x_, h_):
        U = tparams[_p(prefix, "U")]
        preact = tensor.dot(h_, U) + x_
        r = tensor.nnet.sigmoid(block(preact, 0))
        u = tensor.nnet.sigmoid(block(preact, 1))
        n = tensor.tanh(tensor.dot(r * h_, U[:, 2 * dim:]) + block(x_, 2))
        h = (1.0 - u) * h_ + u * n
        return m_[:, None] * h + (1.0 - m_)[:, None] * h_

    projected = tensor.dot(state_below, tparams[_p(prefix, "W")]) + tparams[_p(prefix, "b")]
    rval, updates = theano.scan(step, sequences=[mask, projected],
                                outputs_info=[tensor.alloc(numpy_floatX(0.0), n_samples, dim)],
                                name=_p(prefix, "layers"), n_steps=nsteps)
    return rval


def gru_layer(tparams, state_below, options, prefix="gru", mask=None):
    rval = _gru_states(tparams, state_below, options, prefix, mask)
    return rval[0]          # THE BUG: one output, so rval is already the (T, B, H) tensor


def gru_layer_fixed(tparams, state_below, options, prefix="gru", mask=None):
    return _gru_states(tparams, state_below, options, prefix, mask)
