//go:build tools

// Package tools records the program this module exists to build (vegeta's main package), so
// `go mod tidy` keeps every module it needs in go.sum.
package tools

import _ "github.com/tsenart/vegeta/v12"
