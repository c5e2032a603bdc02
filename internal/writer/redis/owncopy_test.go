package redis

import (
	"bufio"
	"strings"
	"testing"
)

func TestCompleteCommands(t *testing.T) {
	const set = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n"
	const incr = "*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n"
	const ts = "#TS:1764633600\r\n"
	const multi, exec = "*1\r\n$5\r\nmulti\r\n", "*1\r\n$4\r\nEXEC\r\n"
	for _, tt := range []struct {
		name string
		in   string
		want int
		bad  bool
	}{
		{"empty", "", 0, false},
		{"whole", set + incr, len(set + incr), false},
		{"cut in the header", set + "*2\r", len(set), false},
		{"cut in a length", set + "*2\r\n$4", len(set), false},
		{"cut in a bulk string", set + "*2\r\n$4\r\nIN", len(set), false},
		{"cut before the last CRLF", set + incr[:len(incr)-1], len(set), false},
		{"not a command", set + "+OK\r\n", len(set), true},
		{"annotations", ts + set + ts, len(ts + set + ts), false},
		{"cut in a transaction", set + multi + incr, len(set), false},
		{"a whole transaction", set + multi + incr + exec, len(set + multi + incr + exec), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := completeCommands(bufio.NewReader(strings.NewReader(tt.in)))
			if int(got) != tt.want || (err != nil) != tt.bad {
				t.Errorf("completeCommands(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.bad)
			}
		})
	}
}
