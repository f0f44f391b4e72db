"""The words a user reads when a GPU cannot be used, checked on any machine. (What a real GPU
does is in tests/gpu.)"""

from __future__ import annotations

from inference.gpu import gpu_requirements, install_hint, provider_failure

# What onnxruntime-gpu 1.31 printed on an H200 machine with CUDA_VISIBLE_DEVICES="" (shortened).
NO_DEVICE = """*************** EP Error ***************
EP Error /onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc:154 std::conditional_t<THRW,
 void, onnxruntime::common::Status> onnxruntime::CudaCall(ERRTYPE, const char*, const char*) CUDA
failure 100: no CUDA-capable device is detected ; GPU=-1 ; hostname=vm ; file=/onnxruntime_src/
onnxruntime/core/providers/cuda/cuda_execution_provider.cc ; line=355 ; expr=cudaSetDevice(id);
 when using ['CUDAExecutionProvider', 'CPUExecutionProvider']
Falling back to ['CPUExecutionProvider'] and retrying.
****************************************
""".replace("CUDA\nfailure", "CUDA failure")


def test_the_cause_is_cudas_own_words():
    assert provider_failure(NO_DEVICE) == "no CUDA-capable device is detected"


def test_another_ep_error_is_kept_in_one_line():
    printed = "EP Error libcublasLt.so.13: cannot open shared\n object file when using ['x']"
    assert provider_failure(printed) == "libcublasLt.so.13: cannot open shared object file"


def test_nothing_printed_says_so():
    assert provider_failure("") == "no reason given"


def test_the_requirements_name_cuda_cudnn_and_the_extra():
    text = gpu_requirements()
    assert "NVIDIA GPU" in text and "cuDNN 9" in text and "'gpu' extra" in text


def test_with_the_cpu_build_alone_the_hint_is_the_gpu_extra():
    # this test environment has onnxruntime and not onnxruntime-gpu (the `dev` install)
    assert (
        install_hint() == "install the 'gpu' extra as the README says, or allow the fallback to CPU"
    )
