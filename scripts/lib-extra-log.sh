# Sourced by valgrind.sh and fuzz.sh (sanitize.sh has meson's own log). Their results go to the
# extra test log, one JSON object a line with meson's testlog.json keys (name, result "OK" or
# "FAIL", stdout), so that count-tests.py counts them with the suite's own log.
extra_log=build/meson-logs/extra-testlog.json

# extra_log_reset PREFIX: drops the entries an earlier run of the same script left ("PREFIX...").
extra_log_reset() {
  mkdir -p "$(dirname "$extra_log")"
  touch "$extra_log"
  grep -vF "{\"name\": \"$1" "$extra_log" > "$extra_log.new" || true
  mv "$extra_log.new" "$extra_log"
}

# extra_log_add NAME OK|FAIL STDOUT
extra_log_add() {
  python3 -c 'import json, sys; print(json.dumps({"name": sys.argv[1], "result": sys.argv[2], "stdout": sys.argv[3]}))' \
    "$1" "$2" "$3" >> "$extra_log"
}
