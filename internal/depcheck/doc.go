// Package depcheck holds no code: its tests enforce the library's import
// direction (the table in deps_test.go, after Go's own go/build/deps_test.go)
// and the house rule that library packages keep no package-level loggers,
// read no environment and have no init side effects.
//
// The table is policy. Do not loosen it to make a build pass; move the code
// to the layer where it belongs instead.
package depcheck
