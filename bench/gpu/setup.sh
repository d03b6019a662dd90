# shellcheck shell=bash
# Set up LLaMA-Factory 0.9.5 + tunebot's runners on a lent GPU machine (the `device` tool).
#
# Source it from the repo root at the start of every device call, with `.whl` named in `carry`:
#
#     source bench/gpu/setup.sh || exit 1
#
# What it does (see docs/gpu-setup.md for why each piece is there):
#   - installs the wheels carried in .whl/ into /tmp/site with --no-deps (the image already has
#     torch 2.11/CUDA, numpy, safetensors, huggingface_hub, pandas, pyarrow, matplotlib, ...),
#     skipping the install when /tmp/site already holds this exact wheel set (a warm machine);
#   - puts /tmp/site (then the repo root, for `runners`) first on PYTHONPATH, so the carried
#     transformers 5.6.0 / tokenizers 0.22.2 shadow the image's newer ones;
#   - puts /tmp/site/bin (llamafactory-cli, lmf) first on PATH and makes sure `torchrun` resolves;
#   - exports the NVLink-multicast-off variables the device README requires, DISABLE_VERSION_CHECK
#     and HF_HUB_OFFLINE;
#   - prints the versions that matter. TUNEBOT_SETUP_QUIET=1 skips that (saves ~5 s of imports).
#
# Written to be sourced: it never calls `exit` and never sets shell options in the caller.

_tb_setup() {
  local root wheels site stamp want t0 t1
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)" || return 1
  wheels="$root/.whl"
  site="${TUNEBOT_SITE:-/tmp/site}"
  stamp="$site/.tunebot-wheelset"

  if ! compgen -G "$wheels/*.whl" >/dev/null; then
    echo "setup.sh: no wheels in $wheels (name .whl in the device call's carry)" >&2
    return 1
  fi

  # The wheel set's identity: names and sizes (one version of each, see docs/gpu-setup.md).
  want="$(cd "$wheels" && ls -l -- *.whl | awk '{print $5, $NF}' | sort)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "setup.sh: $site already holds this wheel set; not reinstalling"
  else
    t0=$(date +%s%N)
    rm -rf "$site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --disable-pip-version-check --target "$site" "$wheels"/*.whl || {
      echo "setup.sh: pip install into $site failed" >&2
      return 1
    }
    printf '%s\n' "$want" >"$stamp"
    t1=$(date +%s%N)
    echo "setup.sh: installed $(ls "$wheels"/*.whl | wc -l) wheels into $site in $(( (t1 - t0) / 1000000 )) ms"
  fi

  # `pip --target` writes console scripts to $site/bin with a shebang of the python that ran pip
  # (the image's python3). torchrun ships with the image's torch; add a shim if it is not on PATH.
  if ! PATH="$site/bin:$PATH" command -v torchrun >/dev/null 2>&1; then
    mkdir -p "$site/bin"
    printf '#!/bin/sh\nexec python3 -m torch.distributed.run "$@"\n' >"$site/bin/torchrun"
    chmod +x "$site/bin/torchrun"
  fi

  # Prepend once (sourcing twice in one shell must not grow the paths).
  case ":${PYTHONPATH:-}:" in *":$site:$root:"*) ;; *) export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}" ;; esac
  case ":$PATH:" in *":$site/bin:"*) ;; *) export PATH="$site/bin:$PATH" ;; esac
  export DISABLE_VERSION_CHECK=1
  export HF_HUB_OFFLINE=1
  export HF_HOME="${HF_HOME:-/tmp/hf}"
  export MPLCONFIGDIR="${MPLCONFIGDIR:-/tmp/mpl}"
  export PYTHONUNBUFFERED=1
  # NVLink multicast off (device README / KINDS.md): a program using it can take the host's
  # shared GPUs out of service. Keep these exported for every child process.
  export NCCL_NVLS_ENABLE=0
  export TORCH_SYMM_MEM_DISABLE_MULTICAST=1
  export NVSHMEM_DISABLE_NVLS=1

  if [ "${TUNEBOT_SETUP_QUIET:-0}" != 1 ]; then
    python3 - <<'PY'
import importlib.metadata as md, platform
import torch
def v(n):
    try:
        return md.version(n)
    except md.PackageNotFoundError:
        return "-"
import llamafactory, transformers
print(f"python {platform.python_version()}  torch {torch.__version__} (cuda {torch.version.cuda}, "
      f"{torch.cuda.device_count()} GPU(s){': ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''})")
print(f"transformers {transformers.__version__}  llamafactory {llamafactory.__version__}  "
      + "  ".join(f"{n} {v(n)}" for n in ("peft", "trl", "accelerate", "datasets", "tokenizers",
                                           "liger-kernel", "huggingface-hub")))
PY
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
      | sed 's/^/gpu: /'
  fi
}

_tb_setup
_tb_rc=$?
unset -f _tb_setup
if (return 0 2>/dev/null); then
  # sourced: hand the status to the caller without ending its shell
  if [ "$_tb_rc" = 0 ]; then unset _tb_rc; return 0; else unset _tb_rc; return 1; fi
else
  echo "setup.sh: source this file (source bench/gpu/setup.sh); run as a program it sets nothing" >&2
  exit "$_tb_rc"
fi
