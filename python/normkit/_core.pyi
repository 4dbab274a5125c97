import numpy as np

def layer_norm_forward(
    x: np.ndarray,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    eps: float,
    y: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    rows: int,
    cols: int,
) -> None: ...
def layer_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    gamma: np.ndarray | None,
    dx: np.ndarray,
    dgamma: np.ndarray | None,
    dbeta: np.ndarray | None,
    rows: int,
    cols: int,
) -> None: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def openmp_enabled() -> bool: ...
def active_isa() -> str: ...
def available_isas() -> list[str]: ...
def set_isa(name: str) -> None: ...
def batch_norm_forward(
    x: np.ndarray,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    y: np.ndarray,
    mean: np.ndarray,
    invstd: np.ndarray,
    n: int,
    c: int,
    s: int,
    training: bool,
    momentum: float,
    eps: float,
) -> None: ...
def batch_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    invstd: np.ndarray,
    gamma: np.ndarray | None,
    dx: np.ndarray,
    dgamma: np.ndarray | None,
    dbeta: np.ndarray | None,
    n: int,
    c: int,
    s: int,
    training: bool,
) -> None: ...
def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...
def release_cached_memory() -> int: ...
def cached_bytes() -> int: ...
def copy(dst: np.ndarray, src: np.ndarray) -> None: ...
