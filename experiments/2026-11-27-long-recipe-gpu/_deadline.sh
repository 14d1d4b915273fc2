# Sourced by run_best.sh and ../2026-11-27-resnet20-seeds/run_ema.sh. Needs O (the output folder), F (its files
# folder), DEV (the device) and END (the deadline, in bash's SECONDS).
run() {  # run NAME CMD...: one command with the time left, its JSON and stderr kept; fails when the command does
  local name=$1 start=$SECONDS left=$((END - SECONDS)); shift
  if [ "$left" -le 5 ]; then echo "$name skipped: deadline" >> "$O/steps.txt"; return 1; fi
  # shellcheck disable=SC2068  # the command is a word list
  timeout "$left" $@ --device "$DEV" --json > "$F/$name.json" 2> "$F/$name.err"; local rc=$?
  echo "$name rc=$rc $((SECONDS - start)) s" >> "$O/steps.txt"; return $rc
}
