"""Clients for the served model: gRPC streaming and the HTTP generate extension (trt_gemma4.client.triton)."""

from trt_gemma4.client.triton import (
    Chunk,
    GenerateRequest,
    GenerateResult,
    GrpcClient,
    HttpClient,
    RequestTimeout,
    ServerError,
    make_client,
)

__all__ = [
    "Chunk",
    "GenerateRequest",
    "GenerateResult",
    "GrpcClient",
    "HttpClient",
    "RequestTimeout",
    "ServerError",
    "make_client",
]
