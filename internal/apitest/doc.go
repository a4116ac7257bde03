// Package apitest holds the tests that guard the module's public API: no
// internal type in an exported signature, and every public package usable from
// a module outside this one.
package apitest
