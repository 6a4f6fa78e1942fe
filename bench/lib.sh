# Shared by the bench scripts (sourced, not run).

# server_url LOG PID [TRIES]: waits until the server PID, writing its log to LOG, says it is
# listening (TRIES x 0.2 s, default 600 = 2 minutes) and prints its URL. Fails, printing the
# log, if the server exits first or never listens.
server_url() {
  local log=$1 pid=$2 tries=${3:-600}
  for _ in $(seq "$tries"); do
    if grep -q "listening on" "$log"; then
      grep -o 'http://[0-9.:]*' "$log" | head -1
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  echo "the server did not start listening (log: $log):" >&2
  cat "$log" >&2
  return 1
}
