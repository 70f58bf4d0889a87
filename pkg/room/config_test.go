package room

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// TestConfigHelpStatesConstants checks that every help text of Config
// that states a constant's value states the constant's current value: a
// struct tag cannot refer to a constant, so this keeps them from
// drifting apart.
func TestConfigHelpStatesConstants(t *testing.T) {
	for _, tc := range []struct {
		field, want string
	}{
		{"RateCloseAfter", "within " + RateCloseWindow.String() + " "},
		{"ByteRatePerIP", fmt.Sprintf("bursts of %d seconds' worth", addrBurstSeconds)},
		{"HistoryMax", fmt.Sprintf("at most %d", MaxHistoryMax)},
	} {
		t.Run(tc.field, func(t *testing.T) {
			f, ok := reflect.TypeFor[Config]().FieldByName(tc.field)
			if !ok {
				t.Fatalf("Config has no field %s", tc.field)
			}
			if help := f.Tag.Get("help"); !strings.Contains(help, tc.want) {
				t.Errorf("Config.%s help %q does not say %q; update the tag to the constant", tc.field, help, tc.want)
			}
		})
	}
}
