#include "stream/image_server.hpp"

#include "img_streamer.pb-c.h"
