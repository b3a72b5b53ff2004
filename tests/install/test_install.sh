#!/usr/bin/env bash
# make install into a temporary prefix, then use zinc only from there, as a user would:
# every public header compiles as C11 and as C++ from the installed include/ alone; the
# example model (examples/mixer, copied out of the tree) builds with pkg-config only, its
# layers pass a finite-difference check, it trains with the installed zinc-run at DP 2 /
# ZeRO-3 to the losses of its single-rank run, and a run resumed from its checkpoint
# continues to the uninterrupted run's losses. DESTDIR stages the same files; uninstall
# removes them all.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/zinc-install.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# the build flavour that made $BUILD, so make does not rebuild it another way
# (and a sanitized library needs its runtime in the programs built against it)
san=()
case $BUILD in
    *asan) flav=(ASAN=1) san=(-fsanitize=address) ;; *ubsan) flav=(UBSAN=1) san=(-fsanitize=undefined) ;;
    *cuda) flav=(CUDA=1) ;; *) flav=() ;;
esac
[ -n "${ZINC_MAKE_FLAGS:-}" ] && read -r -a flav <<< "$ZINC_MAKE_FLAGS" # the flavour, when the name does not tell
mk() { make --no-print-directory -s BUILD="$BUILD" "${flav[@]}" "$@" > "$TMP/make.log" 2>&1 || { cat "$TMP/make.log"; fail "make $*"; }; }

P=$TMP/prefix
# install must take $BUILD as the suite built it: a rebuild here (another flavour) would
# change the programs the other tests run
stamp() { stat -c %Y "$BUILD/libzinc.a" "$BUILD/zinc-train" 2>/dev/null; }
before=$(stamp)
mk install PREFIX="$P"
[ -z "$before" ] || [ "$before" = "$(stamp)" ] \
    || fail "make install rebuilt $BUILD: it was built with other flags than ${flav[*]:-none} (set ZINC_MAKE_FLAGS)"
for f in bin/zinc-train bin/zinc-run bin/zinc-ckpt bin/zinc-data lib/libzinc.a lib/libzinc.so lib/pkgconfig/zinc.pc \
         include/zinc/engine.h include/zinc/data.h; do
    [ -e "$P/$f" ] || fail "make install wrote no $f"
done
soname=$(readelf -d "$P/lib/libzinc.so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = libzinc.so.0 ] || fail "libzinc.so's soname is '$soname'"
[ "$(readlink "$P/lib/libzinc.so.0")" = "$(basename "$(ls "$P"/lib/libzinc.so.0.*)")" ] || fail "libzinc.so.0 link"
export PKG_CONFIG_PATH=$P/lib/pkgconfig
flags="$(pkg-config --cflags --libs zinc)" || fail "pkg-config zinc"
case "$flags" in *"$PWD"*) fail "pkg-config's flags point into the source tree: $flags" ;; esac
pkg-config --static --libs zinc | grep -q -- "-ljansson" || fail "zinc.pc lists no private deps"
echo "installed: $(cd "$P" && find . -type f | wc -l) files; pkg-config: $flags"

# every public header, as C11 and as C++, from the installed include/ only
mkdir -p "$TMP/hdr"
{ for h in "$P"/include/zinc/*.h; do echo "#include <zinc/$(basename "$h")>"; done; echo "int main(void) { return 0; }"; } \
    > "$TMP/hdr/all.c"
n_h=$(ls "$P"/include/zinc/*.h | wc -l)
[ "$n_h" -eq "$(ls include/zinc/*.h | wc -l)" ] || fail "installed $n_h headers of $(ls include/zinc/*.h | wc -l)"
cc -std=c11 -Wall -Wextra -pedantic -Werror $(pkg-config --cflags zinc) -fsyntax-only "$TMP/hdr/all.c" \
    || fail "the public headers do not compile as C11"
sed 's/int main(void)/int main()/' "$TMP/hdr/all.c" > "$TMP/hdr/all.cpp"
c++ -std=c++17 -Wall -Wextra -pedantic -Werror $(pkg-config --cflags zinc) -fsyntax-only "$TMP/hdr/all.cpp" \
    || fail "the public headers do not compile as C++"
# extern "C": a C++ program links the library's functions
cat > "$TMP/hdr/link.cpp" <<'CPP'
#include <zinc/config.h>
#include <cstdio>
int main() { zinc_config c; zinc_config_defaults(&c); std::printf("%d\n", (int)c.zero.stage); return 0; }
CPP
c++ -std=c++17 "${san[@]}" "$TMP/hdr/link.cpp" $flags -o "$TMP/hdr/link" && [ "$("$TMP/hdr/link")" = 0 ] \
    || fail "a C++ program does not link against libzinc"
echo "$n_h public headers compile as C11 and C++ (-pedantic -Werror); a C++ program links"

# the example, out of the tree, built as its README says
cp -r examples/mixer "$TMP/ex"
cd "$TMP/ex"
cc -O2 -Wall -Wextra -Werror "${san[@]}" mixer.c $(pkg-config --cflags --libs zinc) -o mixer || fail "building the example"
ldd ./mixer | grep -q "$P/lib/libzinc.so.0" || fail "the example does not load the installed libzinc: $(ldd ./mixer | grep zinc)"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
./mixer mixer.json --set zero_optimization.stage=0 --gradcheck || fail "the example's gradients"
# libzinc.a with the private deps zinc.pc lists for --static
cc -O2 "${san[@]}" mixer.c $(pkg-config --cflags zinc) "$P/lib/libzinc.a" \
    $(pkg-config --static --libs zinc | sed 's/ -lzinc / /') -o mixer-static || fail "linking libzinc.a with pkg-config --static"
ldd ./mixer-static | grep -q libzinc && fail "mixer-static loads libzinc.so"
./mixer-static mixer.json --set zero_optimization.stage=0 --gradcheck > /dev/null || fail "the statically linked example"
run() { # NAME RANKS ARGS...: the example's losses into NAME
    local name=$1 n=$2; shift 2
    "$P/bin/zinc-run" -n "$n" ./mixer mixer.json "$@" > "$name.log" 2>&1 || { cat "$name.log"; fail "$name"; }
    sed -n 's/^step \([0-9]*\) loss //p' "$name.log" > "$name.loss"
}
run one 1
run two 2 --set train.save_dir="$TMP/ck" --set train.save_every=20
[ "$(wc -l < one.loss)" -eq 40 ] || fail "40 steps, got $(wc -l < one.loss)"
awk 'NR == 1 { a = $1 } END { exit !(a - $1 > 1.0) }' one.loss || fail "the loss did not fall: $(head -1 one.loss) -> $(tail -1 one.loss)"
d=$(paste one.loss two.loss | awk '{ r = ($1 - $2) / $1; if (r < 0) r = -r; if (r > m) m = r } END { printf "%.3g", m }')
awk -v d="$d" 'BEGIN { exit !(d <= 1e-5) }' || fail "DP 2 / ZeRO-3 differs from one rank by $d"
echo "DP 2 / ZeRO-3 through the installed zinc-run: losses $(head -1 two.loss) -> $(tail -1 two.loss), max rel diff to one rank $d"
# a masked source (some targets -1): the mean loss divides by the targets every rank counts
run mone 1 --masked
run mtwo 2 --masked
cmp -s one.loss mone.loss && fail "--masked trained the same losses as the unmasked run"
d=$(paste mone.loss mtwo.loss | awk '{ r = ($1 - $2) / $1; if (r < 0) r = -r; if (r > m) m = r } END { printf "%.3g", m }')
awk -v d="$d" 'BEGIN { exit !(d <= 1e-5) }' || fail "masked: DP 2 / ZeRO-3 differs from one rank by $d"
echo "masked source: DP 2 / ZeRO-3 vs one rank max rel diff $d"
run res 2 --set train.save_dir="$TMP/ck" --set train.resume=global_step20
cmp -s <(tail -n 20 two.loss) res.loss || fail "the resumed run's steps 21-40 differ from the uninterrupted run"
run res1 1 --set train.save_dir="$TMP/ck" --set train.resume=global_step20
d=$(paste <(tail -n 20 two.loss) res1.loss | awk '{ r = ($1 - $2) / $1; if (r < 0) r = -r; if (r > m) m = r } END { printf "%.3g", m }')
awk -v d="$d" 'BEGIN { exit !(d <= 1e-5) }' || fail "resumed on one rank: $d from the DP 2 run"
echo "resumed from step 20: bitwise equal at DP 2, max rel diff $d at DP 1"
cd - > /dev/null

# DESTDIR stages the same tree under it; uninstall removes every file install wrote
mk install PREFIX=/opt/zinc DESTDIR="$TMP/stage"
cmp -s <(cd "$P" && find . -type f | sort) <(cd "$TMP/stage/opt/zinc" && find . -type f | sort) \
    || fail "DESTDIR staged other files than PREFIX"
grep -q "^prefix=/opt/zinc$" "$TMP/stage/opt/zinc/lib/pkgconfig/zinc.pc" || fail "zinc.pc under DESTDIR names the staging folder"
mk uninstall PREFIX="$P"
left=$(find "$P" \( -type f -o -type l \) | wc -l)
[ "$left" -eq 0 ] || fail "uninstall left $left files: $(find "$P" \( -type f -o -type l \))"
echo "DESTDIR stages the same files; uninstall removes them all"
echo OK
