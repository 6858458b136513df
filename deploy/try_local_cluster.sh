#!/usr/bin/env bash
# Try the on-prem cluster of deploy/ray_local.yaml for real: `ray up` over SSH, `ray submit` of
# deploy/submit_tiny.py, `ray job submit` of the tiny config, `ray down`. Run from the repository
# root with mvae-dist's environment active. Needs: sshd on the machines of the YAML (here
# 127.0.0.1) accepting ~/.ssh/id_ed25519, rsync, and each machine's login shell activating an
# environment with mvae-dist (e.g. `. /path/.venv/bin/activate` in ~/.bashrc). WARNING: the
# YAML's start commands run `ray stop`, which stops every Ray instance on those machines.
set -euo pipefail
YAML=${1:-deploy/ray_local.yaml}
export RAY_USAGE_STATS_ENABLED=0
[ -f ~/.ray/auth_token ] || ray get-auth-token --generate
log=$(mktemp -d)
echo "== ray up $YAML"
ray up "$YAML" -y --no-config-cache > "$log/up.log" 2>&1 || { tail -30 "$log/up.log"; exit 1; }
trap 'echo "== ray down"; ray down "$YAML" -y > "$log/down.log" 2>&1 && tail -1 "$log/down.log"' EXIT
head_ip=$(ray get-head-ip "$YAML" 2>/dev/null | tail -1)
echo "head: $head_ip"
echo "== ray submit $YAML deploy/submit_tiny.py"
ray submit "$YAML" deploy/submit_tiny.py 2>&1 | tr '\r' '\n' | grep -a "\[submitted-tiny\] step\|run id:"
echo "== ray job submit (token auth)"
RAY_AUTH_MODE=token ray job submit --address "http://$head_ip:8265" --working-dir mvae_dist/configs/embedded -- \
    sh -c 'exec mvae-dist train --config tiny.yaml data.url=$HOME/mvae-dist/data-tiny train.name=job-tiny train.eval_every=0' \
    2>&1 | tr '\r' '\n' | grep -a "finished:\|MLflow run\|succeeded\|failed"
