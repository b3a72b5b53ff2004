# zinc - ZeRO in C.  `make` builds, `make test` tests, `make run` trains the demo.
# `make ASAN=1 ...` / `make UBSAN=1 ...` build sanitized into build-asan/ build-ubsan/.
# `make fuzz` builds the libFuzzer targets (clang, ASan + UBSan) into build-fuzz/ and runs each
# FUZZ_TIME seconds (tests/fuzz/run-fuzz.sh); `make test` replays their corpora.

CC      := mpicc
OPT     ?= -O2 -march=native
CFLAGS  := -std=c11 $(OPT) -g -Wall -Wextra -Wshadow -Wstrict-prototypes \
           -Wmissing-prototypes -Wpointer-arith -Wvla -fopenmp -D_GNU_SOURCE \
           -Iinclude -I/usr/include/x86_64-linux-gnu/openblas-pthread -MMD -MP -fPIC
# OpenBLAS's OpenMP build shares one thread pool with zinc's OpenMP kernels;
# the pthreads build's threads and OpenMP's spinning workers fight over the
# cores (measured: a step at 40% of sgemm peak instead of 82%).
BLAS_DIR := /usr/lib/x86_64-linux-gnu/openblas-openmp
LDLIBS  := -ljansson -lpcre2-8 -luring $(BLAS_DIR)/libopenblas.so.0 -Wl,-rpath,$(BLAS_DIR) -lm -fopenmp
BUILD   := build
# Every program that computes links kernels/cpu/blas_select.o, whose
# constructor makes OpenBLAS run the kernels this processor can run
# (zinc/blas.h); zinc-run computes nothing and leaves that to its ranks.
BLAS_SELECT := -Wl,--undefined=zinc_blas_summary

ifeq ($(ASAN),1)
BUILD   := build-asan
CFLAGS  += -fsanitize=address -fno-omit-frame-pointer
LDLIBS  += -fsanitize=address
endif
ifeq ($(UBSAN),1)
BUILD   := build-ubsan
CFLAGS  += -fsanitize=undefined -fno-sanitize-recover=undefined
LDLIBS  += -fsanitize=undefined
endif
# The fuzz build (`make fuzz` runs it): clang, since libFuzzer is clang's; the library
# is instrumented for coverage without libFuzzer's main (fuzzer-no-link), and every UBSan
# report stops the run (a finding, not a warning). mpi.h and libmpi come from Open MPI's
# wrapper, asked for its flags rather than run, as the compiler is not its own. UBSan's
# checks keep clang from vectorizing the kernels' `omp simd` loops, which it reports per
# loop (-Wpass-failed); no fuzz target runs a kernel.
ifeq ($(FUZZ),1)
BUILD   := build-fuzz
CC      := clang
CFLAGS  += $(shell mpicc -showme:compile) -fsanitize=fuzzer-no-link,address,undefined \
           -fno-sanitize-recover=undefined -fno-omit-frame-pointer -Wno-pass-failed
LDLIBS  += $(shell mpicc -showme:link) -fsanitize=address,undefined
endif
ifeq ($(WERROR),1)
CFLAGS  += -Werror
endif
.DEFAULT_GOAL := all
.SECONDARY:     # keep intermediate objects (no rebuilds from pattern chains)

# CUDA backend: only with `make CUDA=1` (nvcc needed then, never otherwise),
# built into build-cuda/; `make test-gpu` runs the GPU checks.
include cuda.mk

LIB_SRC := $(wildcard core/*.c kernels/cpu/*.c comm/*.c data/*.c checkpoint/*.c zero/*.c tensor_parallel/*.c pipeline/*.c \
                      offload/*.c engine/*.c models/*.c monitor/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
LIB     := $(BUILD)/libzinc.a
# the shared library: libzinc.so.VERSION, soname libzinc.so.SOVERSION (bumped when the
# ABI breaks); objects are built -fPIC once for both libraries
VERSION   := 0.1.0
SOVERSION := 0
SHLIB   := $(BUILD)/libzinc.so.$(VERSION)

TOOL_SRC := $(wildcard tools/zinc_*.c)
PROGS   := $(patsubst tools/zinc_%.c,$(BUILD)/zinc-%,$(TOOL_SRC)) $(BUILD)/zinc-run
# tests/<module>/test_*.c are test programs the runner runs; prog_*.c are
# helper programs that shell tests drive (built, not run directly).
TEST_SRC := $(filter-out tests/gpu/%,$(wildcard tests/*/test_*.c tests/*/prog_*.c))
TESTS   := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
BENCH_SRC := $(wildcard bench/*.c)
BENCHES := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))
# Fuzz targets tests/fuzz/fuzz_<target>.c: linked with tests/fuzz/replay.c by the normal
# build (the replay `make test` runs over tests/fuzz/corpus/<target>/), with libFuzzer
# by `make fuzz`. The hostfile target drives zinc-run's parsers, which libzinc lacks.
FUZZ_TARGETS := config manifest safetensors data hostfile tokenizer
FUZZ_REPLAYS := $(FUZZ_TARGETS:%=$(BUILD)/tests/fuzz/replay_%)
FUZZ_BINS    := $(FUZZ_TARGETS:%=$(BUILD)/fuzz_%)
FUZZ_LAUNCHER_OBJ := $(BUILD)/launcher/inputs.o $(BUILD)/launcher/util.o
FUZZ_TIME    ?= 10

DEPS_STAMP := .deps-installed

.PHONY: all deps test run bench clean fuzz fuzz-build
all: $(DEPS_STAMP) $(PROGS) $(SHLIB) $(TESTS) $(BENCHES) $(FUZZ_REPLAYS)

# Installs missing system packages once per checkout (scripts/install-deps.sh).
$(DEPS_STAMP): scripts/install-deps.sh
	@./scripts/install-deps.sh
	@touch $@
deps: $(DEPS_STAMP)

# Objects depend on the compiler and flags they were built with: a change of either
# (a new flag, OPT=...) rebuilds them instead of linking stale objects.
FLAGS_STAMP := $(BUILD)/.cflags
$(FLAGS_STAMP): FORCE
	@mkdir -p $(BUILD)
	@echo '$(CC) $(CFLAGS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS)' > $@
.PHONY: FORCE
FORCE:

$(BUILD)/%.o: %.c $(FLAGS_STAMP) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ) $(CUDA_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(SHLIB): $(LIB_OBJ) $(CUDA_OBJ)
	$(CC) -shared -Wl,-soname,libzinc.so.$(SOVERSION) -Wl,--no-undefined $^ -o $@ $(LDLIBS)

$(BUILD)/zinc-%: $(BUILD)/tools/zinc_%.o $(LIB)
	$(CC) $^ -o $@ $(BLAS_SELECT) $(LDLIBS)
$(BUILD)/zinc-run: $(patsubst %.c,$(BUILD)/%.o,$(wildcard launcher/*.c)) $(LIB)
	$(CC) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIB)
	$(CC) $^ -o $@ $(BLAS_SELECT) $(LDLIBS) -lcunit
$(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIB)
	$(CC) $^ -o $@ $(BLAS_SELECT) $(LDLIBS)

# objects first, then the library (the launcher objects need it)
$(BUILD)/tests/fuzz/replay_%: $(BUILD)/tests/fuzz/replay.o $(BUILD)/tests/fuzz/fuzz_%.o $(LIB)
	$(CC) $(filter %.o,$^) $(filter %.a,$^) -o $@ $(LDLIBS)
$(BUILD)/tests/fuzz/replay_hostfile $(BUILD)/fuzz_hostfile: $(FUZZ_LAUNCHER_OBJ)
ifeq ($(FUZZ),1)
$(BUILD)/fuzz_%: $(BUILD)/tests/fuzz/fuzz_%.o $(LIB)
	$(CC) -fsanitize=fuzzer $(filter %.o,$^) $(filter %.a,$^) -o $@ $(LDLIBS)
fuzz-build: $(FUZZ_BINS)
endif

# Installs clang, libFuzzer and libomp if missing, builds the targets into build-fuzz/
# and runs each FUZZ_TIME seconds (FUZZ_TARGETS="config data" for some only).
fuzz: $(DEPS_STAMP)
	@./scripts/install-deps.sh fuzz
	$(MAKE) FUZZ=1 BUILD=build-fuzz fuzz-build
	FUZZ_TIME=$(FUZZ_TIME) ./tests/fuzz/run-fuzz.sh $(FUZZ_TARGETS)

test: all
	BUILD=$(BUILD) ./scripts/run-tests.sh

run: all
	BUILD=$(BUILD) ./scripts/run-demo.sh

bench: all
	BUILD=$(BUILD) ./bench/bench-train.sh

# `make install PREFIX=/usr/local DESTDIR=`: the programs, libzinc.so (soname
# libzinc.so.$(SOVERSION)) and libzinc.a, the public headers under include/zinc/ and zinc.pc
# for pkg-config. zinc.pc's Libs carry an rpath to LIBDIR (and -lm, which layers written
# against zinc/engine.h use), so a program built with
# `cc prog.c $(pkg-config --cflags --libs zinc)` finds libzinc at any PREFIX; the private
# deps are listed for `pkg-config --static`. `make CUDA=1 install` installs the same names
# with the cuda device inside. `make uninstall` removes exactly what install wrote.
PREFIX  ?= /usr/local
LIBDIR  ?= $(PREFIX)/lib
INCDIR  ?= $(PREFIX)/include
BINDIR  ?= $(PREFIX)/bin
PCDIR   ?= $(LIBDIR)/pkgconfig
HEADERS := $(wildcard include/zinc/*.h)
MPI_LIBS := $(shell mpicc -showme:link 2>/dev/null)
# OpenBLAS by its full path with its rpath, as zinc links it (the openmp flavour ships
# libopenblas.so.0 only, so -lopenblas would not find it)
PC_PRIVATE := $(LDLIBS) $(MPI_LIBS)
.PHONY: install uninstall
install: $(PROGS) $(LIB) $(SHLIB)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCDIR)/zinc $(DESTDIR)$(PCDIR)
	install -m 755 $(PROGS) $(DESTDIR)$(BINDIR)/
	install -m 644 $(LIB) $(DESTDIR)$(LIBDIR)/libzinc.a
	install -m 755 $(SHLIB) $(DESTDIR)$(LIBDIR)/libzinc.so.$(VERSION)
	ln -sf libzinc.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libzinc.so.$(SOVERSION)
	ln -sf libzinc.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libzinc.so
	install -m 644 $(HEADERS) $(DESTDIR)$(INCDIR)/zinc/
	@printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(LIBDIR)' 'includedir=$(INCDIR)' '' \
	    'Name: zinc' 'Description: ZeRO in C: a DeepSpeed-style training engine' 'Version: $(VERSION)' \
	    'Cflags: -I$${includedir}' 'Libs: -L$${libdir} -Wl,-rpath,$${libdir} -lzinc -lm' \
	    'Libs.private: $(strip $(PC_PRIVATE))' > $(DESTDIR)$(PCDIR)/zinc.pc
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig > /dev/null; then ldconfig; fi
uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(notdir $(PROGS)))
	rm -f $(DESTDIR)$(LIBDIR)/libzinc.a $(DESTDIR)$(LIBDIR)/libzinc.so $(DESTDIR)$(LIBDIR)/libzinc.so.$(SOVERSION) \
	      $(DESTDIR)$(LIBDIR)/libzinc.so.$(VERSION) $(DESTDIR)$(PCDIR)/zinc.pc
	rm -f $(addprefix $(DESTDIR)$(INCDIR)/zinc/,$(notdir $(HEADERS)))
	-rmdir $(DESTDIR)$(INCDIR)/zinc 2>/dev/null

clean:
	rm -rf build build-asan build-ubsan build-cuda build-fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
