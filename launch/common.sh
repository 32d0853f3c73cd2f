# Shared by gcp.sh and slurm.sh (sourced, not run): errors, required settings, and the dry-run switch.
#
# Every external command goes through `invoke`, so `--dry-run` prints exactly what would run (one line per
# command, shell-quoted, prefixed with "+ ") and nothing is called.

DRY_RUN="${XALIGN_DRY_RUN:-0}"

die() {
  echo "$(basename "$0"): error: $*" >&2
  exit 2
}

# require NAME FLAG ENV_VAR: fail with both spellings of a missing setting.
require() {
  local value="$1" flag="$2" env_var="$3"
  [[ -n "$value" ]] || die "missing setting: give $flag or set $env_var"
}

# require_choice VALUE FLAG CHOICE...: fail unless VALUE is one of the choices.
require_choice() {
  local value="$1" flag="$2"
  shift 2
  local choice
  for choice in "$@"; do
    [[ "$value" == "$choice" ]] && return 0
  done
  die "$flag=$value: expected one of: $*"
}

# invoke CMD ARGS...: run the command, or print it under --dry-run.
invoke() {
  if [[ "$DRY_RUN" == 1 ]]; then
    local arg line="+"
    for arg in "$@"; do
      if [[ "$arg" =~ ^[-A-Za-z0-9_./:=@%+,]+$ ]]; then line+=" $arg"; else line+=" ${arg@Q}"; fi
    done
    printf '%s\n' "$line"
  else
    "$@"
  fi
}

# quote_words ARGS...: the arguments as one shell-quoted string, for a command run by a remote shell.
quote_words() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(printf '%q' "$word")"
  done
  printf '%s' "$out"
}

# normalize_args ARGS...: NORMALIZED_ARGS with every "--flag=value" split into "--flag" "value" (up to "--"); the
# value of "--extra" is left whole (it is main's own flags, "--config.x=1 ...").
normalize_args() {
  NORMALIZED_ARGS=()
  local passthrough=0 previous="" arg
  for arg in "$@"; do
    if [[ "$passthrough" == 0 && "$previous" != "--extra" && "$arg" == --*=* ]]; then
      NORMALIZED_ARGS+=("${arg%%=*}" "${arg#*=}")
      arg="${arg%%=*}"
    else
      [[ "$arg" == "--" && "$previous" != "--extra" ]] && passthrough=1
      NORMALIZED_ARGS+=("$arg")
    fi
    previous="$arg"
  done
}

# need_value "$@": called on "--flag VALUE ..."; fail when the value is missing.
need_value() {
  [[ $# -ge 2 && "$2" != --* ]] || die "$1 needs a value"
}

# parse_settings ARGS...: the command line of a launch script. Each "--flag VALUE" named in the script's VALUE_FLAGS
# (flag -> variable) sets that variable; each switch in SWITCH_FLAGS (flag -> "VARIABLE=value") applies its
# assignment; "--extra 'ARGS'" and everything after "--" go to EXTRA_ARGS; other words are left in POSITIONAL.
parse_settings() {
  normalize_args "$@"
  set -- "${NORMALIZED_ARGS[@]+"${NORMALIZED_ARGS[@]}"}"
  POSITIONAL=()
  while (($#)); do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1; shift ;;
      --extra) [[ $# -ge 2 ]] || die "--extra needs a value"; read -r -a EXTRA_ARGS <<<"$2"; shift 2 ;;
      --) shift; EXTRA_ARGS+=("$@"); break ;;
      --*)
        if [[ -n "${SWITCH_FLAGS[$1]:-}" ]]; then
          printf -v "${SWITCH_FLAGS[$1]%%=*}" '%s' "${SWITCH_FLAGS[$1]#*=}"
          shift
        elif [[ -n "${VALUE_FLAGS[$1]:-}" ]]; then
          need_value "$@"
          printf -v "${VALUE_FLAGS[$1]}" '%s' "$2"
          shift 2
        else
          die "unknown option $1 (see --help)"
        fi ;;
      *) POSITIONAL+=("$1"); shift ;;
    esac
  done
}
