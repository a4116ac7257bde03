// Package lab builds a small Teredo internet out of Linux network namespaces (a bridged
// "internet", a Teredo server host, a relay host, an IPv6-only host and clients behind
// real nftables NATs) so end-to-end tests can run the project's commands and Miredo
// against each other; it needs root and skips or, under CI=true, fails without it.
//
// The lab never touches the root network namespace: every address it configures lives
// in namespaces it created, and every namespace, process and socket it creates is
// released through testing.TB.Cleanup.
package lab
