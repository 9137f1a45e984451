"""NumPy references of every activation name, shared by the tests of the cells that use them."""
import math

import numpy as np


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x):
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


REFERENCES = {
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "gelu": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
    "fast_gelu": lambda x: x / (1.0 + np.exp(-1.702 * np.abs(x))) * np.exp(0.851 * (x - np.abs(x))),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "hswish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "hsigmoid": lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "softplus": lambda x: np.log1p(np.exp(x)),
    "softmax": _softmax,
    "logsoftmax": lambda x: np.log(_softmax(x)),
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
    "leakyrelu": lambda x: np.where(x > 0, x, 0.2 * x),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),
}
