// Package packaging holds no code: its tests check the files operators
// use to run the commands, contrib/systemd and the Containerfile.
package packaging
