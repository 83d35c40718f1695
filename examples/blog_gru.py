"""A GRU language model in the style of the seed blog (and the NumPy RNN tutorials it
follows), with its BPTT derived by hand -- correctly.

One sequence of word ids at a time; parameters are attributes; ``bptt(x, y)``
returns the gradients in the order E, U, V, W, b, c.  Check it with::

    gradcheck check examples/blog_gru.py:BlogGRU

Shapes (H hidden units, N words, L layers; gates in the order z, r, h)::

    E (H, N)        x_t = E[:, word_t]            (the embedding width is H)
    U (L, 3, H, H)  input weights   of z, r, h
    W (L, 3, H, H)  recurrent weights of z, r, h
    b (L, 3, H)     biases
    V (N, H), c (N,)

Per layer, with the hard sigmoid sigma(a) = clip(0.2 a + 0.5, 0, 1)::

    z = sigma(U_z x + W_z s_prev + b_z)
    r = sigma(U_r x + W_r s_prev + b_r)
    h = tanh(U_h x + W_h (s_prev * r) + b_h)
    s = (1 - z) * h + z * s_prev
    o_t = softmax(V s_top + c),   L = -sum_t log o_t[y_t]
"""

import numpy as np


def hard_sigmoid(a):
    return np.clip(0.2 * a + 0.5, 0.0, 1.0)


def hard_sigmoid_slope(g):
    """d sigma / d a from the gate's OUTPUT g: 0.2 where 0 < g < 1 (-2.5 < a < 2.5), else 0."""
    return np.where((g > 0.0) & (g < 1.0), 0.2, 0.0)


def softmax(a):
    e = np.exp(a - a.max())
    return e / e.sum()


class BlogGRU:
    def __init__(self, word_dim=8, hidden_dim=4, layer_num=2, bptt_truncate=-1, seed=0):
        self.word_dim, self.hidden_dim, self.layer_num = word_dim, hidden_dim, layer_num
        self.bptt_truncate = bptt_truncate          # -1: full BPTT
        rng = np.random.default_rng(seed)
        H, N, L = hidden_dim, word_dim, layer_num
        self.E = rng.uniform(-1, 1, (H, N))
        self.U = rng.uniform(-1, 1, (L, 3, H, H)) / np.sqrt(H)
        self.W = rng.uniform(-1, 1, (L, 3, H, H)) / np.sqrt(H)
        self.b = rng.uniform(-0.5, 0.5, (L, 3, H))
        self.V = rng.uniform(-1, 1, (N, H)) / np.sqrt(H)
        self.c = rng.uniform(-0.5, 0.5, N)

    def forward_propagation(self, x):
        T, L, H = len(x), self.layer_num, self.hidden_dim
        o = np.zeros((T, self.word_dim))
        s, z, r, h = (np.zeros((T, L, H)) for _ in range(4))
        for t in range(T):
            inp = self.E[:, x[t]]
            for l in range(L):
                s_prev = s[t - 1][l] if t > 0 else np.zeros(H)
                U, W, b = self.U[l], self.W[l], self.b[l]
                z[t][l] = hard_sigmoid(U[0] @ inp + W[0] @ s_prev + b[0])
                r[t][l] = hard_sigmoid(U[1] @ inp + W[1] @ s_prev + b[1])
                h[t][l] = np.tanh(U[2] @ inp + W[2] @ (s_prev * r[t][l]) + b[2])
                s[t][l] = (1 - z[t][l]) * h[t][l] + z[t][l] * s_prev
                inp = s[t][l]
            o[t] = softmax(self.V @ s[t][L - 1] + self.c)
        return o, s, z, r, h

    def calculate_total_loss(self, X, Y):
        return sum(-np.log(self.forward_propagation(x)[0][np.arange(len(y)), y]).sum()
                   for x, y in zip(X, Y))

    def bptt(self, x, y):
        T, L, H = len(y), self.layer_num, self.hidden_dim
        o, s, z, r, h = self.forward_propagation(x)
        dLdE, dLdU, dLdV = np.zeros_like(self.E), np.zeros_like(self.U), np.zeros_like(self.V)
        dLdW, dLdb, dLdc = np.zeros_like(self.W), np.zeros_like(self.b), np.zeros_like(self.c)
        delta_o = o.copy()                      # a copy: o is the forward pass's output
        delta_o[np.arange(T), y] -= 1.0
        k = self.bptt_truncate if self.bptt_truncate >= 0 else T
        for t in reversed(range(T)):
            dLdV += np.outer(delta_o[t], s[t][L - 1])
            dLdc += delta_o[t]
            delta_s = np.zeros((L, H))          # dL_t/ds of each layer, through later steps
            delta_s[L - 1] = self.V.T @ delta_o[t]
            for step in reversed(range(max(0, t - k), t + 1)):
                delta_below = 0.0               # from the layer above, at this step
                new_delta_s = np.zeros((L, H))
                for l in reversed(range(L)):
                    ds = delta_s[l] + delta_below
                    s_prev = s[step - 1][l] if step > 0 else np.zeros(H)
                    inp = self.E[:, x[step]] if l == 0 else s[step][l - 1]
                    zz, rr, hh = z[step][l], r[step][l], h[step][l]
                    U, W = self.U[l], self.W[l]
                    dz = ds * (s_prev - hh) * hard_sigmoid_slope(zz)
                    dh = ds * (1 - zz) * (1 - hh ** 2)
                    dr = (W[2].T @ dh) * s_prev * hard_sigmoid_slope(rr)
                    for g, d, rec in ((0, dz, s_prev), (1, dr, s_prev), (2, dh, s_prev * rr)):
                        dLdU[l][g] += np.outer(d, inp)
                        dLdW[l][g] += np.outer(d, rec)
                        dLdb[l][g] += d
                    delta_below = U[0].T @ dz + U[1].T @ dr + U[2].T @ dh
                    new_delta_s[l] = W[0].T @ dz + W[1].T @ dr + (W[2].T @ dh) * rr + ds * zz
                dLdE[:, x[step]] += delta_below     # layer 0's input adjoint
                delta_s = new_delta_s
        return [dLdE, dLdU, dLdV, dLdW, dLdb, dLdc]


# the gate blocks of U, W and b lie along axis 1, in the blog's order
BlogGRU.gradcheck_blocks = {name: (("z", "r", "h"), 1) for name in ("U", "W", "b")}
