# Shortcuts for developers; the README's commands are the scripts themselves
# (a fresh Debian machine may have no make).
.PHONY: run test test-quick autobahn autobahn-quick bench bench-broadcast bench-deflate bench-storm lint

run:
	scripts/run
test:
	scripts/test
test-quick:
	scripts/test --quick
autobahn:
	scripts/setup-venv test && .venv/bin/python scripts/autobahn.py
autobahn-quick:
	scripts/setup-venv test && .venv/bin/python scripts/autobahn.py --quick
bench:
	scripts/setup-venv test && .venv/bin/python bench/echo_bench.py
bench-broadcast:
	scripts/setup-venv test && .venv/bin/python bench/broadcast_bench.py
bench-deflate:
	scripts/setup-venv test && .venv/bin/python bench/deflate_bench.py
bench-storm:
	scripts/setup-venv test && .venv/bin/python bench/storm_bench.py
lint:
	scripts/setup-venv test && .venv/bin/python -m pip install --quiet -c constraints.txt ruff mypy mypy-zope && \
	  .venv/bin/ruff check chatservice tests scripts bench twisted && .venv/bin/ruff format --check chatservice tests scripts bench twisted && .venv/bin/mypy chatservice
