import numpy as np

def layer_norm_forward(
    x: np.ndarray,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    eps: float,
    y: np.ndarray | None,
    stats_shape: tuple[int, ...],
    rows: int,
    cols: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def layer_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    gamma: np.ndarray | None,
    param_shape: tuple[int, ...],
    rows: int,
    cols: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def openmp_enabled() -> bool: ...
def threads_spin() -> bool: ...
def active_isa() -> str: ...
def available_isas() -> list[str]: ...
def set_isa(name: str) -> None: ...
def batch_norm_forward(
    x: np.ndarray,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    y: np.ndarray | None,
    n: int,
    c: int,
    s: int,
    training: bool,
    momentum: float,
    eps: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def batch_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    invstd: np.ndarray,
    gamma: np.ndarray | None,
    n: int,
    c: int,
    s: int,
    training: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]: ...
def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...
def release_cached_memory() -> int: ...
def cached_bytes() -> int: ...
def stream_threshold_bytes() -> int: ...
def l2_cache_bytes() -> int: ...
def last_level_cache_bytes() -> int: ...
def copy(dst: np.ndarray, src: np.ndarray) -> None: ...
