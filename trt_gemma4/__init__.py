"""trt-gemma4: Gemma-4-12B FP8 (ModelOpt fp8_pb_wo) to TensorRT-LLM 1.2.1 engines and a Triton repository."""

__version__ = "0.1.0"
