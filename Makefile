# Developer shortcuts. The two commands that set up a fresh machine are scripts/demo and
# scripts/test (see README.md); these targets assume the packages are installed.
GO ?= go

.PHONY: build test vet bench demo clean
build:
	mkdir -p bin && $(GO) build -o bin/ ./cmd/dvmd ./cmd/vmctl ./cmd/vmctl-lab
vet:
	$(GO) vet ./...
test: build vet
	$(GO) test -count=1 ./...
bench:
	GOMAXPROCS=1 $(GO) test ./scheduler -run '^$$' -bench BenchmarkPlace -benchtime 1x
demo:
	./scripts/demo
clean:
	rm -rf bin dvm-dev
