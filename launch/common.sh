# Shell helpers shared by run_tpu.sh and run_local.sh (sourced, not run).

# Prints the header comment of script $1, lines 2..$2, as usage text, and exits with 2.
usage_from_header() {
  sed -n "2,${2}p" "$1" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# One argument quoted for a POSIX shell, readably: 'it'\''s' style, bare when safe.
shquote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
