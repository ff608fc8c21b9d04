# The two commands of the README. Both are idempotent.
.PHONY: demo test setup setup-test

demo: setup
	.venv/bin/semisup demo

test: setup-test
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

setup:
	scripts/setup.sh

setup-test:
	scripts/setup-test.sh
