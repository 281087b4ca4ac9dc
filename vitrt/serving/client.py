"""A served model seen from a client (tritonclient, HTTP or gRPC), on this machine only.

:class:`RemoteModel` reads the model's configuration from the server (input and output names, data types, dims,
``max_batch_size``), so one client works against ``vitrt serve`` and against an exported repository in Triton's
container alike. Every address is checked to be a loopback address before anything is sent: vitrt's load
generator and tests never send traffic off this machine.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.serving.repository import SERVE_HINT

PROTOCOLS = ("http", "grpc")


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # "http" | "grpc"
    host: str
    port: int

    @property
    def address(self) -> str:
        """host:port as tritonclient takes it ([::1]:8000 for IPv6)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.address}"


def parse_endpoint(url: str) -> Endpoint:
    """``http://HOST:PORT``, ``grpc://HOST:PORT`` or ``HOST:PORT`` (HTTP); HOST must be a loopback address."""
    text = url if "://" in url else f"http://{url}"
    parts = urlsplit(text)
    if parts.scheme not in PROTOCOLS:
        raise VitrtError(f"URL '{url}' has scheme '{parts.scheme}': use http://HOST:PORT or grpc://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path not in ("", "/"):
        raise VitrtError(f"URL '{url}' must be http://HOST:PORT or grpc://HOST:PORT, e.g. http://127.0.0.1:8000")
    check_loopback(parts.hostname)
    return Endpoint(parts.scheme, parts.hostname, port)


def check_loopback(host: str) -> None:
    """Refuse any host that is or resolves to a non-loopback address (127.0.0.0/8, ::1 only)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise VitrtError(f"cannot resolve '{host}'; vitrt only talks to servers on this machine (127.0.0.1)") from None
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside:
        raise VitrtError(f"'{host}' resolves to {outside[0]}, not a loopback address: vitrt's clients only target "
                         "servers on this machine (127.0.0.0/8 or ::1)")


def client_module(protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError:
        raise VitrtError(f"the Triton client is not installed: {SERVE_HINT}") from None
    return module


class RemoteModel:
    """One connection to one served model. Not thread-safe: give each thread its own.

    It has a backend runner's ``batch`` and ``infer``, so ``vitrt.calib.evaluate`` measures top-1 through the server.
    """

    def __init__(self, url: str, model: str, timeout_s: float = 30.0):
        self.endpoint = parse_endpoint(url)
        self.model, self.timeout_s = model, timeout_s
        self._tc = client_module(self.endpoint.protocol)
        if self.endpoint.protocol == "http":
            self.client = self._tc.InferenceServerClient(self.endpoint.address, connection_timeout=timeout_s,
                                                         network_timeout=timeout_s)
        else:
            self.client = self._tc.InferenceServerClient(self.endpoint.address)
        config = self._config()
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.input = config["input"][0]
        self.output = config["output"][0]
        self.input_dims = tuple(int(d) for d in self.input["dims"])  # gRPC's JSON spells them as strings
        if self.input.get("data_type", "TYPE_FP32") != "TYPE_FP32":
            raise VitrtError(f"model '{model}' takes {self.input.get('data_type')} input; vitrt's clients send float32 "
                             "image tensors: name the engine model itself (not its _ensemble or _preprocess)")
        self.output_dims = tuple(int(d) for d in self.output["dims"])

    def _config(self) -> dict:
        from tritonclient.utils import InferenceServerException

        try:
            if self.endpoint.protocol == "http":
                return self.client.get_model_config(self.model)
            return self.client.get_model_config(self.model, as_json=True)["config"]
        except InferenceServerException as exc:
            raise VitrtError(f"model '{self.model}' at {self.endpoint.url}: {exc.message()}") from None
        except OSError as exc:
            raise VitrtError(f"no Triton server answers at {self.endpoint.url} ({exc.strerror or exc}); start one "
                             "with vitrt serve OUT") from None
        except Exception as exc:  # the client's own parse errors: e.g. an http:// URL on the gRPC port
            raise VitrtError(f"the server at {self.endpoint.url} does not speak {self.endpoint.protocol} "
                             f"({type(exc).__name__}): check the scheme and port (vitrt serve: http :8000, "
                             "grpc :8001)") from None

    @property
    def request_batch(self) -> int | None:
        """The batch every request must have (a static-shape model), or None when the server batches."""
        return None if self.max_batch_size > 0 else self.input_dims[0]

    @property
    def batch(self) -> int:
        """Images per request when evaluating a data set: the model's own batch, or up to 64 the server batches.
        With it a RemoteModel evaluates like a backend runner (``vitrt.calib.evaluate.runner_accuracy``)."""
        return self.request_batch or min(64, self.max_batch_size)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Send ``images`` as one request; returns the model's first output. Raises InferenceServerException."""
        dtype = self._tc_dtype()
        data = np.ascontiguousarray(images, dtype=_numpy_dtype(dtype))
        tensor = self._tc.InferInput(self.input["name"], list(data.shape), dtype)
        if self.endpoint.protocol == "http":
            tensor.set_data_from_numpy(data, binary_data=True)
            outputs = [self._tc.InferRequestedOutput(self.output["name"], binary_data=True)]
            result = self.client.infer(self.model, [tensor], outputs=outputs, timeout=int(self.timeout_s * 1e6))
        else:
            tensor.set_data_from_numpy(data)
            outputs = [self._tc.InferRequestedOutput(self.output["name"])]
            result = self.client.infer(self.model, [tensor], outputs=outputs, client_timeout=self.timeout_s)
        return result.as_numpy(self.output["name"])

    def _tc_dtype(self) -> str:
        return self.input["data_type"].removeprefix("TYPE_")

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "RemoteModel":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def _numpy_dtype(triton_dtype: str):
    from tritonclient.utils import triton_to_np_dtype

    return triton_to_np_dtype(triton_dtype)

