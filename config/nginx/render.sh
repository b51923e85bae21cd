#!/usr/bin/env bash
# Renders the nginx site config/nginx/deepfake.conf for one host, on stdout:
#   config/nginx/render.sh [VALUES_FILE] | sudo tee /etc/nginx/conf.d/deepfake.conf && sudo nginx -t && sudo systemctl reload nginx
# Values: DEEPFAKE_* variables set in the environment win over VALUES_FILE (default: config/nginx/deepfake.env).
# DEEPFAKE_MAX_BODY_BYTES defaults to max_request_size in $DEEPFAKE_PROPERTIES (default: config/production.properties),
# so the proxy refuses exactly the bodies TorchServe would refuse, with a JSON 413 instead of an empty one.
# Only the ${DEEPFAKE_*} placeholders are substituted (envsubst, Debian package gettext-base); nginx's own $variables stay.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
values=${1:-$here/deepfake.env}
properties=${DEEPFAKE_PROPERTIES:-$here/../production.properties}
template=$here/deepfake.conf

fail() { echo "render: $*" >&2; exit 1; }
command -v envsubst >/dev/null 2>&1 || fail "envsubst not found; install it: sudo apt-get install -y gettext-base"
[ -f "$values" ] || fail "$values does not exist"

while IFS= read -r line; do
  [[ $line =~ ^(DEEPFAKE_[A-Z_]+)=(.*)$ ]] || continue
  name=${BASH_REMATCH[1]}
  [ -n "${!name+set}" ] || export "$name=${BASH_REMATCH[2]}"
done < "$values"

if [ -z "${DEEPFAKE_MAX_BODY_BYTES:-}" ]; then
  [ -f "$properties" ] || fail "$properties does not exist (set DEEPFAKE_PROPERTIES or DEEPFAKE_MAX_BODY_BYTES)"
  DEEPFAKE_MAX_BODY_BYTES=$(sed -n 's/^[[:space:]]*max_request_size[[:space:]]*=[[:space:]]*//p' "$properties" | tail -n 1)
  # TorchServe's default when the line is absent (TORCHSERVE_NOTES.md).
  export DEEPFAKE_MAX_BODY_BYTES=${DEEPFAKE_MAX_BODY_BYTES:-6553500}
fi
[[ $DEEPFAKE_MAX_BODY_BYTES =~ ^[1-9][0-9]*$ ]] || fail "DEEPFAKE_MAX_BODY_BYTES must be a number of bytes, got '$DEEPFAKE_MAX_BODY_BYTES'"

placeholders=$(grep -o '\${DEEPFAKE_[A-Z_]*}' "$template" | sort -u)
for placeholder in $placeholders; do
  name=${placeholder:2:${#placeholder}-3}
  [ -n "${!name:-}" ] || fail "$name is not set: put it in $values or the environment"
done
envsubst "$(echo "$placeholders" | tr '\n' ' ')" < "$template"
