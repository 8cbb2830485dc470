# Sourced, not run: turns TORCH_BUILD into the pip arguments that pick that torch build.
# One owner for the choice: scripts/bootstrap.sh, scripts/lock.sh and the Dockerfile all use it.
#
#   TORCH_BUILD=default  what pip resolves by itself: on Linux x86_64 that is PyPI's CUDA build (several
#                        GB: torch plus its CUDA libraries as nvidia-* wheels); elsewhere the CPU build; or a
#                        local wheel that your pip configuration (find-links) offers
#   TORCH_BUILD=cpu      the CPU-only build (about 200 MB) from PyTorch's own index
#   TORCH_BUILD=cu126 | cu128 | cu130 ...   that CUDA build from PyTorch's own index
# The version always comes from requirements/constraints.txt.
TORCH_INDEX_BASE="https://download.pytorch.org/whl"

torch_index_args() {
  case "${TORCH_BUILD:-default}" in
    default) ;;
    cpu | cu[0-9][0-9]* | rocm[0-9]* | xpu) echo "--index-url $TORCH_INDEX_BASE/$TORCH_BUILD" ;;
    *)
      echo "error: TORCH_BUILD=$TORCH_BUILD is not a torch build: use default, cpu, or a CUDA build such as cu126, cu128, cu130" >&2
      return 2
      ;;
  esac
}
