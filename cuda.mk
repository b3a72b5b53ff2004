# cuda.mk - the CUDA backend, included by the Makefile. Explicit, never
# auto-detected (CI machines may lack CUDA):
#   make CUDA=1      builds everything into build-cuda/ with the cuda device
#                    (kernels/cuda/*.cu: op tables, device, and the nccl comm
#                    backend), so build-cuda/zinc-train runs on CPU or GPU;
#                    needs nvcc on PATH (or NVCC=/path/to/nvcc) and NCCL.
#                    GPU test programs go to build-cuda/gpu-tests/, out of
#                    reach of `make test` (which runs build/tests/ only).
#   make test-gpu    builds the above and runs scripts/test-gpu.sh: exits 77
#                    when no GPU is visible.
# Without CUDA=1 this file defines only the test-gpu target, so the CPU build
# never needs nvcc.

.PHONY: test-gpu gpu-tests
test-gpu:
	@$(MAKE) --no-print-directory CUDA=1 all
	BUILD=build-cuda ./scripts/test-gpu.sh

ifeq ($(CUDA),1)

NVCC      ?= nvcc
NVCC_PATH := $(shell command -v $(NVCC) 2>/dev/null)
ifeq ($(NVCC_PATH),)
$(error CUDA=1: nvcc not found ('$(NVCC)' is not on PATH); add the CUDA toolkit's bin folder (e.g. /usr/local/cuda/bin) to PATH or pass NVCC=/path/to/nvcc)
endif
CUDA_HOME ?= $(patsubst %/bin/,%,$(dir $(NVCC_PATH)))
BUILD     := build-cuda
# the GPU machine's processor may lack this one's extensions: AVX2 at most
OPT       := -O2 -march=x86-64-v3
CFLAGS    := $(filter-out -march=native,$(CFLAGS)) -march=x86-64-v3 -DZINC_HAVE_CUDA \
             -I$(CUDA_HOME)/include
# Hopper (H100/H200): sm_90 machine code plus compute_90 PTX for later chips.
CUDA_ARCH ?= -gencode 'arch=compute_90,code=[sm_90,compute_90]'
NVCCFLAGS := -O3 -std=c++17 $(CUDA_ARCH) -lineinfo -Xcompiler -fPIC,-Wall,-Wextra,-march=x86-64-v3 \
             -DZINC_HAVE_CUDA -Iinclude -MMD -MP
ifeq ($(WERROR),1)
NVCCFLAGS += -Werror all-warnings -Xcompiler -Werror
endif
CUDA_LDLIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart \
               -lstdc++
# NCCL (the nccl comm backend) when its header is found; without it the
# build has the mpi backend only, which stages device buffers (NCCL=0 forces that).
NCCL_INC := $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h \
                                   /usr/local/include/nccl.h))
ifneq ($(NCCL),0)
ifneq ($(NCCL_INC),)
CFLAGS      += -DZINC_HAVE_NCCL
CUDA_LDLIBS += -lnccl
else
$(info cuda.mk: nccl.h not found: building without the nccl comm backend)
endif
endif
LDLIBS    += $(CUDA_LDLIBS)

CUDA_SRC := $(wildcard kernels/cuda/*.cu)
CUDA_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/%.o)

# GPU test programs: tests/gpu/test_*.cu (CUDA C++) and tests/gpu/test_*.c,
# linked against the library (CPU reference ops included).
GPU_TESTS := $(patsubst tests/gpu/%.cu,$(BUILD)/gpu-tests/%,$(wildcard tests/gpu/test_*.cu)) \
             $(patsubst tests/gpu/%.c,$(BUILD)/gpu-tests/%,$(wildcard tests/gpu/test_*.c))
GPU_BENCH := $(patsubst bench/%.cu,$(BUILD)/bench/%,$(wildcard bench/*.cu))

all: $(GPU_TESTS) $(GPU_BENCH)
gpu-tests: $(GPU_TESTS)

$(CUDA_OBJ): $(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/gpu-tests/%.o: tests/gpu/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@
$(BUILD)/gpu-tests/%.o: tests/gpu/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
$(GPU_TESTS): $(BUILD)/gpu-tests/%: $(BUILD)/gpu-tests/%.o $(BUILD)/libzinc.a
	$(CC) $^ -o $@ $(BLAS_SELECT) $(LDLIBS)

$(BUILD)/bench/%.o: bench/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@
$(GPU_BENCH): $(BUILD)/bench/%: $(BUILD)/bench/%.o
	$(CC) $^ -o $@ $(LDLIBS)

endif
