# One target per habit. Each does its own setup: a .venv with the project installed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow check eval bench soak clean install browser system-deps \
	compiled test-compiled bench-compiled

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start broker, Redis, worker and generator on free local ports with a live view.
demo: $(STAMP)
	$(BIN)/segmenter demo $(ARGS)

## Unit tests and integration tests on a real broker and Redis (slow tests excluded), their
## files shared out over TEST_JOBS processes (pytest-xdist; each process starts its own broker
## and Redis): the integration tests mostly wait on workers, so two take 0.6 of the time.
## TEST_JOBS=0 runs them in this process, in order.
TEST_JOBS ?= 2
TEST_FLAGS = -m "not slow" -n $(TEST_JOBS) --dist loadfile
test: $(STAMP)
	$(BIN)/pytest $(TEST_FLAGS) $(ARGS)

## Tests marked slow: the quick benchmark run, the CDNOW log through a real worker and a slice of
## it against an offline k-means, two more seeds of the stationary flow-drift test, a visitor
## spike through the step against the flow monitor, a short soak, RocksDB state across a restart
## and across partitions taken over and given back, the wrong-credentials cases of the security test, the fault
## tests the soak also covers (Redis down 30 s, the broker cut, three workers stopped and killed),
## and a live definitions apply with the backfill in the worker (SEGMENTER_BACKFILL_PROCESS=false).
test-slow: $(STAMP)
	$(BIN)/pytest -m slow $(ARGS) || [ $$? -eq 5 ]

## Segmentation quality on generator traffic with known personas: ten seeds at 100k and 1M events,
## two draws at a time, each figure's median and worst beside its target, then the real CDNOW log
## against an offline k-means (scikit-learn, the eval extra), seeds 1 to 5; exit 1 if a target is
## missed. About 22 minutes of CPU for the draws. ARGS="--quick" for a smoke run,
## ARGS="--markdown eval.md" to write the table for the README, ARGS="--seed 7" for one draw.
## Then segment-flow drift against the generator's incidents, seeds 1 to 3 (about 8 minutes of
## CPU; INCIDENT_ARGS for segmenter eval-incidents; skipped with --quick or --seed); exit 1 if
## either misses a target.
eval: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,eval]'
	$(BIN)/segmenter eval $(ARGS); quality=$$?; incidents=0; \
	case " $(ARGS) " in \
	  *" --quick "*|*" --seed "*|*" --seed="*) echo "eval-incidents skipped (ARGS asks for a part)";; \
	  *) $(BIN)/segmenter eval-incidents $(INCIDENT_ARGS); incidents=$$?;; \
	esac; \
	exit $$(( quality || incidents ))

## The step alone in-process, throughput, freshness, read latency, memory, recovery, live
## definitions, scale-out and a million customers beside their baselines (about 70 minutes on
## 2 cores, most of them the million-customer phase); writes docs/benchmarks.md and
## docs/benchmarks.png. ARGS="--quick" for a smoke run, ARGS="--core" for the step alone.
bench: $(STAMP)
	$(BIN)/segmenter bench $(ARGS)

## Chaos soak (about 10 minutes; not part of make test): steady traffic (the CDNOW log, clicks,
## 5% garbage) while workers are SIGKILLed, Redis restarted and the broker cut off; fails if
## anything was lost. Writes its run into docs/reliability.md. ARGS="--minutes 3 --seed 2".
soak: $(STAMP)
	$(BIN)/segmenter soak --out docs/reliability.md $(ARGS)

check: $(STAMP)
	$(BIN)/ruff check models stream tests
	$(BIN)/ruff format --check models stream tests
	$(BIN)/mypy models stream

## System packages some tests need (root and apt; nothing is installed if already present):
## Debian's Chromium for the dashboard's browser test, and Debian's Redis 7 with TLS
## (package redis-tools: the server binary without a system service) for the TLS and Redis Cluster tests.
system-deps:
	@{ command -v chromium >/dev/null 2>&1 && test -x /usr/bin/redis-check-rdb; } || { \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			chromium redis-tools; }
	@chromium --version
	@/usr/bin/redis-check-rdb --version

browser: system-deps

## The compiled core (README "The compiled core"): the working tree's files (tracked and new)
## copied to .build/compiled, models/ compiled there in place by mypyc (SEGMENTER_COMPILE=1,
## setup.py; a C compiler and Python's headers; about 7.5 minutes of one core, again only when
## setup.py or a file of models/ changed). Anything run from there with PYTHONPATH set to it
## runs the compiled core, as the next two targets do.
COMPILED := .build/compiled
COPY_TREE = git ls-files -z --cached --others --exclude-standard \
	| tar --null -T - --ignore-failed-read -cf - | tar -xf - -C $(COMPILED)
$(COMPILED)/.built: setup.py $(wildcard models/*.py) | $(STAMP)
	rm -rf $(COMPILED) && mkdir -p $(COMPILED)
	$(COPY_TREE)
	cd $(COMPILED) && SEGMENTER_COMPILE=1 "$(CURDIR)/$(BIN)/python" setup.py --quiet build_ext --inplace
	touch $@
compiled: $(COMPILED)/.built
	$(COPY_TREE)

## `make test` against the compiled core (the core's doctests left out: compiled functions
## carry no source to run them from).
test-compiled: compiled
	cd $(COMPILED) && PYTHONPATH="$(CURDIR)/$(COMPILED)" "$(CURDIR)/$(BIN)/pytest" -p no:cacheprovider \
		$(TEST_FLAGS) $(ARGS) stream tests

## `make bench` with the compiled core, its report in docs/benchmarks-compiled.md.
bench-compiled: compiled
	cd $(COMPILED) && PYTHONPATH="$(CURDIR)/$(COMPILED)" "$(CURDIR)/$(BIN)/segmenter" bench \
		--out "$(CURDIR)/docs/benchmarks-compiled.md" $(ARGS)

clean:
	rm -rf $(VENV) build .build *.egg-info .pytest_cache .mypy_cache .ruff_cache
