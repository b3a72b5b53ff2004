# cuda.mk - the CUDA backend, included by the Makefile. Explicit, never
# auto-detected (CI machines may lack CUDA):
#   make CUDA=1      also builds build/libzinc_cuda.a (kernels/cuda/*.cu) and
#                    the GPU test build/gpu-tests/test_cuda_ops; needs nvcc on
#                    PATH (or NVCC=/path/to/nvcc)
#   make test-gpu    builds the above with CUDA=1 and runs the GPU test; it
#                    exits 77 (and so does make) when no GPU is visible
# Without CUDA=1 this file defines only the test-gpu target and runs nothing,
# so the CPU build never needs nvcc. GPU tests live in build/gpu-tests/, out
# of reach of scripts/run-tests.sh (`make test` runs build/tests/ only).

.PHONY: test-gpu
test-gpu:
	@$(MAKE) --no-print-directory CUDA=1 gpu-tests
	$(BUILD)/gpu-tests/test_cuda_ops

ifeq ($(CUDA),1)

NVCC      ?= nvcc
NVCC_PATH := $(shell command -v $(NVCC) 2>/dev/null)
ifeq ($(NVCC_PATH),)
$(error CUDA=1: nvcc not found ('$(NVCC)' is not on PATH); add the CUDA toolkit's bin folder (e.g. /usr/local/cuda/bin) to PATH or pass NVCC=/path/to/nvcc)
endif
CUDA_HOME ?= $(patsubst %/bin/,%,$(dir $(NVCC_PATH)))
# Hopper (H100/H200): sm_90 machine code plus compute_90 PTX for later chips.
CUDA_ARCH ?= -gencode 'arch=compute_90,code=[sm_90,compute_90]'
NVCCFLAGS := -O3 -std=c++17 $(CUDA_ARCH) -lineinfo -Xcompiler -fPIC,-Wall,-Wextra \
             -Iinclude -MMD -MP
ifeq ($(WERROR),1)
NVCCFLAGS += -Werror all-warnings -Xcompiler -Werror
endif
CUDA_LDLIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart

CUDA_SRC := $(wildcard kernels/cuda/*.cu)
CUDA_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/%.o)
CUDA_LIB := $(BUILD)/libzinc_cuda.a

# The GPU test's CPU reference: the CPU op table and the status module,
# built again without -march=native so that the test binary also runs on
# the GPU machine's processor; it needs only OpenBLAS and libgomp there
# (not jansson, liburing or CUnit).
GPU_REF_SRC := kernels/cpu/ops_cpu.c kernels/cpu/nn_cpu.c core/status.c
GPU_REF_OBJ := $(GPU_REF_SRC:%.c=$(BUILD)/gpu-tests/ref/%.o)
GPU_TEST_SRC := $(wildcard tests/gpu/test_*.cu)
GPU_TESTS := $(patsubst tests/gpu/%.cu,$(BUILD)/gpu-tests/%,$(GPU_TEST_SRC))

.PHONY: gpu-tests
all: $(CUDA_LIB) $(GPU_TESTS)
gpu-tests: $(GPU_TESTS)

$(CUDA_OBJ): $(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(CUDA_LIB): $(CUDA_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(GPU_REF_OBJ): $(BUILD)/gpu-tests/ref/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -march=native,$(CFLAGS)) -c $< -o $@

$(GPU_TESTS:%=%.o): $(BUILD)/gpu-tests/%.o: tests/gpu/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(GPU_TESTS): $(BUILD)/gpu-tests/%: $(BUILD)/gpu-tests/%.o $(CUDA_LIB) $(GPU_REF_OBJ)
	$(CXX) $^ -o $@ $(CUDA_LDLIBS) $(BLAS_DIR)/libopenblas.so.0 -Wl,-rpath,$(BLAS_DIR) -lm -fopenmp \
	    $(filter -fsanitize=%,$(LDLIBS))

endif
