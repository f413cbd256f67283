# The two commands a fresh machine needs: `make run` (the service, embedded defaults) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := dcmtk orthanc dicom3tools redis-server chromium chromium-driver
PYTEST_ARGS ?=

.PHONY: install system-deps run demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The real peers the tests talk to, from Debian's packages; installed only when missing.
system-deps:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v Orthanc >/dev/null || missing="$$missing orthanc"; \
	command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

run: install
	$(BIN)/plvi serve

# A synthetic lumbar MRI study with known truth, measured with no server: var/demo/result/ holds the outputs,
# var/demo/phantom-0001/truth.json the truth to compare with.
demo: install
	$(BIN)/python -m workers.phantom var/demo --seeds 1
	$(BIN)/plvi analyze var/demo/phantom-0001 --out var/demo/result

test: install system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install system-deps
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) var build *.egg-info
