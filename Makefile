# The two commands of the README: `make demo` and `make test`. Both install what they need
# (idempotent, quiet when already present). Run as root on Debian 12.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: demo demo-pipeline test deps lint bench compare fuzz

deps:
	@bash scripts/deps.sh

demo: deps
	$(CARGO) build --release -q --workspace --bins
	./target/release/xdpnet-bench demo

# The in-memory pipeline on the benchmark-size table (no root, no namespaces).
demo-pipeline:
	$(CARGO) run --release -q -p xdpnet-bench -- pipeline

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -q -- -D warnings

test: deps lint
	bash scripts/fuzz.sh 10
	bash scripts/test.sh

bench: deps
	$(CARGO) bench -p xdpnet-bench

# xdpnet against the kernel path on a lab (root, 2 cores, ~10 min): BENCHMARKS.md's table.
compare: deps
	$(CARGO) build --release -q --workspace --bins
	./target/release/xdpnet-bench compare

fuzz: deps
	bash scripts/fuzz.sh
