# Lambda build for `sam build` (template.yaml uses BuildMethod: makefile): the code and the runtime
# packages of requirements.txt, without the test tools and mocks listed after its "--- tests" line.
LAMBDA_TARGETS = build-ExtractFunction build-TransformFunction build-LoadFunction build-ChartsFunction

$(LAMBDA_TARGETS):
	cp -r lambdas utils main.py "$(ARTIFACTS_DIR)/"
	sed '/^# --- tests/,$$d' requirements.txt > "$(ARTIFACTS_DIR)/requirements.txt"
	echo 'python-dateutil>=2.8.2,<3  # the Lambda runtime'"'"'s botocore needs <3' >> "$(ARTIFACTS_DIR)/requirements.txt"
	python3 -m pip install --quiet --target "$(ARTIFACTS_DIR)" --platform manylinux2014_aarch64 \
		--implementation cp --python-version 3.12 --only-binary=:all: -r "$(ARTIFACTS_DIR)/requirements.txt"
	# Test suites and byte-code caches of the packages: about 100 MB of the 250 MB Lambda allows.
	find "$(ARTIFACTS_DIR)" -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} +
	rm -f "$(ARTIFACTS_DIR)/requirements.txt"

.PHONY: $(LAMBDA_TARGETS)
