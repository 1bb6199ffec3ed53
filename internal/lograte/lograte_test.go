package lograte

import (
	"testing"
	"time"
)

func TestAllowsOneLinePerIntervalAndCountsTheRest(t *testing.T) {
	var l Limiter
	if s, ok := l.Allow(time.Hour); !ok || s != 0 {
		t.Fatalf("first Allow = %d, %v; want 0, true", s, ok)
	}
	for i := 0; i < 5; i++ {
		if _, ok := l.Allow(time.Hour); ok {
			t.Fatalf("Allow %d within the interval let a line through", i)
		}
	}
	l.Expire()
	if s, ok := l.Allow(time.Hour); !ok || s != 5 {
		t.Fatalf("Allow after the interval = %d, %v; want 5, true", s, ok)
	}
	if _, ok := l.Allow(time.Hour); ok {
		t.Fatal("Allow right after an allowed line let a line through")
	}
}
