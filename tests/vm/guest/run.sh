#!/bin/sh
# Run the guest scenarios (tests/vm/guest/test_*.py) in ONE python process, as root,
# inside a VM: the QEMU harness (tests/vm/conftest.py) and vagrant/provision.sh both run
# this script, so both paths execute the same scenario code. Extra arguments go to
# pytest (the harness adds --vtvm-profile=NAME and --junitxml=...).
set -eu
cd "$(dirname "$0")/../../.."
# The scenarios refuse to run without this: on a host they would touch the uplink.
export VTVM_IN_GUEST=1
# Python start-up is slow in a TCG guest over 9p; no third-party plugin is needed here
# (saves ~8 s per boot).
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
exec "${VTVM_PYTHON:-.venv/bin/python}" -m pytest -p no:cacheprovider -q -rA tests/vm/guest "$@"
