#!/usr/bin/env bash
# Fuzzes one target with AFL++ (`cargo afl`, stable Rust) for a while, then
# merges what it found into the target's corpus, minimized.
#
#   fuzz/run.sh TARGET [SECONDS]      TARGET: frame, config, trace, control
#
# Needs `cargo install cargo-afl` (it builds AFL++ for this rustc). The
# fuzzer's state goes to $LB_FUZZ_OUT/TARGET (default /tmp/lb-fuzz/TARGET);
# seeds from $LB_FUZZ_SEEDS/TARGET are added when that is set (see the
# README's Tests section). Crashes stay in the output directory: each is
# an input to replay with `cargo test -p lb-fuzz` once copied into
# corpus/TARGET/.
set -euo pipefail
target=${1:?usage: fuzz/run.sh frame|config|trace|control [SECONDS]}
secs=${2:-600}
cd "$(dirname "$0")"
command -v cargo-afl >/dev/null || {
    echo "run.sh: needs cargo-afl (cargo install cargo-afl)" >&2
    exit 1
}
export CARGO_TARGET_DIR=$PWD/../target/afl
cargo afl build --release --features afl --bin "fuzz_$target"
bin=$CARGO_TARGET_DIR/release/fuzz_$target
out=${LB_FUZZ_OUT:-/tmp/lb-fuzz}/$target
rm -rf "$out"
mkdir -p "$out"
in=$out/in
mkdir -p "$in"
cp corpus/"$target"/* "$in"/
if [ -n "${LB_FUZZ_SEEDS:-}" ] && [ -d "$LB_FUZZ_SEEDS/$target" ]; then
    cp "$LB_FUZZ_SEEDS/$target"/* "$in"/
fi

# A shared, loaded machine: no core binding, a generous timeout; crashes
# are seen by the fuzzer itself whatever core_pattern says.
export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
dict=()
[ -f "dict/$target.dict" ] && dict=(-x "$PWD/dict/$target.dict")
cargo afl fuzz -V "$secs" -t 2000 "${dict[@]}" -i "$in" -o "$out/afl" "$bin" >"$out/fuzz.log" 2>&1 || {
    tail -20 "$out/fuzz.log" >&2
    exit 1
}
grep -E '^(execs_done|execs_per_sec|corpus_count|edges_found|total_edges|bitmap_cvg|saved_crashes|saved_hangs|run_time) ' \
    "$out/afl/default/fuzzer_stats"

# The new corpus: the smallest set of inputs (the old corpus, and what the
# fuzzer queued up to $LB_FUZZ_MAX_BYTES bytes, 2048 by default, to keep the
# corpus small) that covers every edge any of them covers. AFL++'s
# afl-cmin.bash: its Python afl-cmin finds no edge in some targets.
all=$out/all
mkdir -p "$all"
cp corpus/"$target"/* "$all"/
find "$out"/afl/default/queue -maxdepth 1 -name 'id:*' -size -"$((${LB_FUZZ_MAX_BYTES:-2048} + 1))"c \
    -exec cp {} "$all"/ \;
afl_bin=$(ls -d "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs/rustc-*/afl.rs-*/afl/bin | tail -1)
rm -rf "$out/min"
AFL_PATH=$afl_bin PATH=$afl_bin:$PATH afl-cmin.bash -e -t 5000 -i "$all" -o "$out/min" -- "$bin" \
    >"$out/cmin.log" 2>&1
rm -f corpus/"$target"/*
i=0
declare -A seen=()
for f in "$out"/min/*; do
    # afl-cmin may keep two copies of one input (a target whose coverage
    # varies from run to run): keep one.
    sum=$(sha1sum "$f" | cut -c1-12)
    [ -n "${seen[$sum]:-}" ] && continue
    seen[$sum]=1
    cp "$f" "corpus/$target/$(printf '%04d' "$i")-$sum"
    i=$((i + 1))
done
echo "corpus/$target: $i inputs, $(du -sb "corpus/$target" | cut -f1) bytes"
ls "$out"/afl/default/crashes/ 2>/dev/null | grep -v README || true
