# frozen_string_literal: true

module DuoRouting
  # What DuoRouting::Client#complete returns once the stream has finished: the route the sidecar took
  # (a Gitlab::Duo::Routing::V1::ResolveModelResponse), the whole text, and the final event's fields.
  # usage_estimated: the upstream reported no usage, so the token counts are the sidecar's estimate.
  Completion = Struct.new(:route, :text, :finish_reason, :input_tokens, :output_tokens, :usage_estimated,
                          keyword_init: true)
end
