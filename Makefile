# The course's commands. Newcomers need two: `make course` and `make test`; both build what
# they need first (the environments take several minutes the first time, seconds after).
SHELL := /bin/bash
PY ?= python3
COURSE_PY = $$($(PY) -m labsupport.core.envs --python course)
export MPLBACKEND ?= Agg
export PYTHONUNBUFFERED = 1

.PHONY: env course test learner report lab strip doctor system-deps clean

env: system-deps        ## create or update the three environments and their Jupyter kernels
	$(PY) -m labsupport.core.envs

# Debian packages the course uses outside Python: git-lfs (notebook 07's upload route),
# chromium + its driver (the browser test of notebook 06's demo), a CJK font (Chinese
# questions in figures and screenshots) and a colour emoji font (the report card's ✅/❌ would
# be boxes in the browser's screenshots). Installed only when missing.
SYSTEM_PACKAGES = git-lfs chromium chromium-driver fonts-noto-cjk fonts-noto-color-emoji
system-deps:            ## install git-lfs and chromium from Debian when they are missing
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "[system] installing $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "[system] missing Debian packages: $$missing — run: sudo apt-get install $$missing"; exit 1; fi; \
	fi

course: env             ## run every notebook headless on the embedded tiny model; write artifacts/course-report.*
	$(COURSE_PY) -m labsupport.course run

test: env               ## unit tests, notebook runs and hygiene checks
	$(COURSE_PY) -m pytest -ra

learner: env            ## write the learner editions (solutions removed) to artifacts/learner/
	$(COURSE_PY) -m labsupport.course.homework

report: env             ## print the report card of the last `make course`
	$(COURSE_PY) -m labsupport.course report

doctor: env             ## check every environment against its pins
	$(COURSE_PY) -m labsupport.course.doctor

# JupyterLab refuses to start as root without --allow-root; GPU boxes and containers usually run as root.
lab: env                ## open the course in JupyterLab
	@if [ "$$(id -u)" = 0 ]; then \
	  echo "[lab] running as root (a container or GPU box?): starting JupyterLab with --allow-root"; \
	  $(COURSE_PY) -m jupyter lab --allow-root notebooks/; \
	else $(COURSE_PY) -m jupyter lab notebooks/; fi

strip:                  ## remove outputs and execution counts from the committed notebooks
	$(PY) -m labsupport.course.strip notebooks/*.ipynb

clean:                  ## remove generated artifacts (keeps the environments)
	rm -rf artifacts/
