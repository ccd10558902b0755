//go:build tools

// Package tools records the program this module exists to build (cmd/adapter), so `go mod tidy`
// keeps every module it needs in go.sum.
package tools

import _ "sigs.k8s.io/prometheus-adapter/cmd/adapter"
