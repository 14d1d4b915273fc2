# Sourced by the CUDA scripts. Needs LOG (JSON lines), ERR (stderr log) and W (a scratch folder).
step() {  # step NAME TIMEOUT CMD...: run one command, record its wall time, exit code and JSON result
  local name=$1 limit=$2; shift 2
  local start=$(date +%s.%N)
  echo "== $name: $*" >> "$ERR"
  timeout "$limit" "$@" > "$W/$name.json" 2> "$W/$name.err"; local rc=$?
  cat "$W/$name.err" >> "$ERR"
  local wall=$(python3 -c "import time; print(round(time.time() - $start, 2))")
  python3 - "$name" "$rc" "$wall" "$W/$name.json" >> "$LOG" <<'PY'
import json, sys
name, rc, wall, path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
try:
    result = json.load(open(path))
except Exception:
    result = None
print(json.dumps({"step": name, "rc": rc, "wall_s": wall, "result": result}))
PY
  echo "$name rc=$rc wall=${wall}s"; [ "$rc" = 0 ] || tail -3 "$W/$name.err"
}
