//go:build !race

package stt

const raceEnabled = false
