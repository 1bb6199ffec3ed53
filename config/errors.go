package config

import (
	"fmt"
	"sort"
	"strings"
)

// maxErrors bounds how many problems one Parse reports; past that the file is
// probably not a stt-tun configuration at all.
const maxErrors = 20

// Error is one problem in a configuration file, located by line.
type Error struct {
	// Path names the file as it was given to Load or Parse.
	Path string
	// Line is the 1-based line of the problem, or 0 when no line applies.
	Line int
	// Msg says what is wrong and, where possible, how to fix it.
	Msg string
}

// Error formats the problem as FILE:LINE: message, the form editors and CI
// annotations understand.
func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, e.Msg)
	}
	return e.Path + ": " + e.Msg
}

// ErrorList is every problem found in one configuration file, in line order.
// errors.As finds the individual *Error values.
type ErrorList []*Error

// Error prints one problem per line.
func (l ErrorList) Error() string {
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap exposes the individual problems to errors.Is and errors.As.
func (l ErrorList) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}

// errorCollector gathers problems for one file.
type errorCollector struct {
	path string
	errs ErrorList
	more int
}

func (c *errorCollector) add(line int, format string, args ...any) {
	if len(c.errs) >= maxErrors {
		c.more++
		return
	}
	c.errs = append(c.errs, &Error{Path: c.path, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// err returns the collected problems sorted by line, or nil.
func (c *errorCollector) err() error {
	if len(c.errs) == 0 {
		return nil
	}
	sort.SliceStable(c.errs, func(i, j int) bool { return c.errs[i].Line < c.errs[j].Line })
	if c.more > 0 {
		last := c.errs[len(c.errs)-1]
		c.errs = append(c.errs, &Error{Path: c.path, Line: last.Line,
			Msg: fmt.Sprintf("%d more problems not shown", c.more)})
	}
	return c.errs
}
